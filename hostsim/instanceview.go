package hostsim

import (
	"encoding/json"
	"fmt"
	"strings"
)

// InstanceView is the VM instance view as `az vm get-instance-view`
// shows it (properties.instanceView), derived from the latest status blob
// the guest agent uploaded and the VM model's extension resources.
type InstanceView struct {
	// VMAgent is nil until the guest agent uploads a status.
	VMAgent    *VMAgentInstanceView    `json:"vmAgent,omitempty"`
	Extensions []ExtensionInstanceView `json:"extensions"`
	// StatusUploads counts the status blobs received (not an Azure field).
	StatusUploads int `json:"statusUploads"`
}

// VMAgentInstanceView is the guest agent's part of the instance view.
type VMAgentInstanceView struct {
	VMAgentVersion    string                `json:"vmAgentVersion"`
	Statuses          []InstanceViewStatus  `json:"statuses"`
	ExtensionHandlers []HandlerInstanceView `json:"extensionHandlers"`
}

// HandlerInstanceView is one extension handler's status.
type HandlerInstanceView struct {
	Type               string             `json:"type"`
	TypeHandlerVersion string             `json:"typeHandlerVersion"`
	Status             InstanceViewStatus `json:"status"`
}

// ExtensionInstanceView is one extension's status and substatuses.
type ExtensionInstanceView struct {
	Name               string               `json:"name"`
	Type               string               `json:"type"`
	TypeHandlerVersion string               `json:"typeHandlerVersion"`
	Statuses           []InstanceViewStatus `json:"statuses"`
	Substatuses        []InstanceViewStatus `json:"substatuses,omitempty"`
}

// InstanceViewStatus is one status entry. Code is Azure's
// "ProvisioningState/<state>" (or "ComponentStatus/<name>/<state>" for a
// substatus); the simulator appends "/<code>" whenever the numeric code the
// guest reported is not 0, so a code never goes unseen.
type InstanceViewStatus struct {
	Code          string `json:"code"`
	Level         string `json:"level"`
	DisplayStatus string `json:"displayStatus"`
	Message       string `json:"message,omitempty"`
	Time          string `json:"time,omitempty"`
}

// statusBlob is the guest agent's VM status (waagent's status blob v1.x).
type statusBlob struct {
	TimestampUTC    string `json:"timestampUTC"`
	AggregateStatus struct {
		GuestAgentStatus struct {
			Version          string        `json:"version"`
			Status           string        `json:"status"`
			FormattedMessage *blobFmtMsg   `json:"formattedMessage"`
			UpdateStatus     *blobGAUpdate `json:"updateStatus"`
		} `json:"guestAgentStatus"`
		HandlerAggregateStatus []struct {
			HandlerName           string      `json:"handlerName"`
			HandlerVersion        string      `json:"handlerVersion"`
			Status                string      `json:"status"`
			Code                  int         `json:"code"`
			FormattedMessage      *blobFmtMsg `json:"formattedMessage"`
			RuntimeSettingsStatus *struct {
				SequenceNumber int `json:"sequenceNumber"`
				SettingsStatus struct {
					TimestampUTC string `json:"timestampUTC"`
					Status       struct {
						Name             string      `json:"name"`
						Operation        string      `json:"operation"`
						Status           string      `json:"status"`
						Code             int         `json:"code"`
						FormattedMessage *blobFmtMsg `json:"formattedMessage"`
						Substatus        []struct {
							Name             string      `json:"name"`
							Status           string      `json:"status"`
							Code             int         `json:"code"`
							FormattedMessage *blobFmtMsg `json:"formattedMessage"`
						} `json:"substatus"`
					} `json:"status"`
				} `json:"settingsStatus"`
			} `json:"runtimeSettingsStatus"`
		} `json:"handlerAggregateStatus"`
	} `json:"aggregateStatus"`
}

type blobFmtMsg struct {
	Message string `json:"message"`
}

type blobGAUpdate struct {
	Status string `json:"status"`
}

func (m *blobFmtMsg) text() string {
	if m == nil {
		return ""
	}
	return m.Message
}

// provisioningStatus maps an extension status value (success,
// transitioning, warning, error) and code to an instance-view status.
func provisioningStatus(prefix, status string, code int, msg, at string) InstanceViewStatus {
	st := InstanceViewStatus{Level: "Info", Message: msg, Time: at}
	state := ""
	switch strings.ToLower(status) {
	case "success":
		state, st.DisplayStatus = "succeeded", "Provisioning succeeded"
	case "transitioning":
		state, st.DisplayStatus = "transitioning", "Transitioning"
	case "warning":
		state, st.DisplayStatus, st.Level = "succeeded", "Provisioning succeeded", "Warning"
	default:
		state, st.DisplayStatus, st.Level = "failed", "Provisioning failed", "Error"
	}
	st.Code = prefix + state
	if code != 0 {
		st.Code += fmt.Sprintf("/%d", code)
	}
	return st
}

// InstanceView derives the instance view from the latest status blob.
// Extensions follow the VM model; an extension the guest has not reported
// is shown transitioning, as Azure shows it while provisioning.
func (s *Sim) InstanceView() InstanceView {
	raw, uploads := s.StatusBlob()
	iv := InstanceView{Extensions: []ExtensionInstanceView{}, StatusUploads: uploads}
	var blob statusBlob
	parsed := len(raw) > 0 && json.Unmarshal(raw, &blob) == nil
	if parsed {
		ga := blob.AggregateStatus.GuestAgentStatus
		agent := &VMAgentInstanceView{VMAgentVersion: ga.Version, ExtensionHandlers: []HandlerInstanceView{}}
		st := InstanceViewStatus{Code: "ProvisioningState/succeeded", Level: "Info", DisplayStatus: ga.Status,
			Message: ga.FormattedMessage.text(), Time: blob.TimestampUTC}
		if ga.Status != "Ready" {
			st.Code, st.Level = "ProvisioningState/Unavailable", "Warning"
		}
		agent.Statuses = []InstanceViewStatus{st}
		for _, h := range blob.AggregateStatus.HandlerAggregateStatus {
			hs := InstanceViewStatus{Code: "ProvisioningState/succeeded", Level: "Info", DisplayStatus: h.Status,
				Message: h.FormattedMessage.text()}
			if h.Status != "Ready" || h.Code != 0 {
				hs.Code, hs.Level = "ProvisioningState/failed", "Error"
				if h.Code != 0 {
					hs.Code += fmt.Sprintf("/%d", h.Code)
				}
				if h.Status == "Ready" {
					hs.Level = "Warning"
				}
			}
			agent.ExtensionHandlers = append(agent.ExtensionHandlers, HandlerInstanceView{Type: h.HandlerName,
				TypeHandlerVersion: h.HandlerVersion, Status: hs})
		}
		iv.VMAgent = agent
	}
	for _, x := range s.VMExtensions() {
		name := x.Properties.HandlerName()
		ev := ExtensionInstanceView{Name: x.Name, Type: name, TypeHandlerVersion: x.Properties.TypeHandlerVersion}
		reported := false
		if parsed {
			for _, h := range blob.AggregateStatus.HandlerAggregateStatus {
				if !strings.EqualFold(h.HandlerName, name) {
					continue
				}
				reported = true
				ev.TypeHandlerVersion = h.HandlerVersion
				if rs := h.RuntimeSettingsStatus; rs != nil {
					es := rs.SettingsStatus.Status
					ev.Statuses = []InstanceViewStatus{provisioningStatus("ProvisioningState/", es.Status, es.Code,
						es.FormattedMessage.text(), rs.SettingsStatus.TimestampUTC)}
					for _, sub := range es.Substatus {
						ev.Substatuses = append(ev.Substatuses, provisioningStatus("ComponentStatus/"+sub.Name+"/", sub.Status,
							sub.Code, sub.FormattedMessage.text(), ""))
					}
				} else {
					status := "transitioning"
					if h.Status != "Ready" || h.Code != 0 {
						status = "error"
					}
					ev.Statuses = []InstanceViewStatus{provisioningStatus("ProvisioningState/", status, h.Code, h.FormattedMessage.text(), "")}
				}
			}
		}
		if !reported {
			ev.Statuses = []InstanceViewStatus{{Code: "ProvisioningState/transitioning", Level: "Info", DisplayStatus: "Transitioning",
				Message: "The guest agent has not reported this extension yet."}}
		}
		iv.Extensions = append(iv.Extensions, ev)
	}
	return iv
}
