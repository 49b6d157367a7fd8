package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"

	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/prereq"
	"golang.org/x/sys/unix"
)

// Metadata is what the host says about the VM (§6.2): from the goal state,
// the shared config it names, and the IMDS instance document.
type Metadata struct {
	ContainerID      string // goal state Container/ContainerId
	TenantName       string // shared config Deployment@name
	RoleName         string // shared config Role@name
	RoleInstanceName string // shared config first Instance@id

	SubscriptionID    string // IMDS compute.subscriptionId
	ResourceGroupName string // IMDS compute.resourceGroupName
	VMID              string // IMDS compute.vmId
	ImageOrigin       uint64 // 1 when IMDS compute.offer is not empty, else 0
}

// Machine is what the agent knows about the machine itself.
type Machine struct {
	// Arch is the CPU architecture as uname reports it (x86_64, aarch64).
	Arch string
	// OSVersion is "Linux:<NAME>-<VERSION_ID>" from os-release.
	OSVersion string
	// RAMMiB is the total memory in MiB; Processors the CPUs usable.
	RAMMiB     uint64
	Processors uint64
}

// KeywordName is the KeywordName param: {"CpuArchitecture":"<arch>"}.
func (m Machine) KeywordName() string {
	b, _ := json.Marshal(struct {
		CpuArchitecture string
	}{m.Arch})
	return string(b)
}

// LocalMachine reads the Machine facts of this machine; a fact that cannot
// be read is left empty or zero.
func LocalMachine() Machine {
	m := Machine{Processors: uint64(runtime.NumCPU())}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Arch = unix.ByteSliceToString(u.Machine[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.RAMMiB = uint64(si.Totalram) * uint64(si.Unit) / (1 << 20)
	}
	if o, err := (prereq.Paths{}).ReadOSRelease(); err == nil {
		m.OSVersion = "Linux:" + o.String()
	}
	return m
}

// goalState is the part of the WireServer goal state the agent reads.
type goalState struct {
	Container struct {
		ContainerID   string `xml:"ContainerId"`
		RoleInstances []struct {
			SharedConfig string `xml:"Configuration>SharedConfig"`
		} `xml:"RoleInstanceList>RoleInstance"`
	} `xml:"Container"`
}

// sharedConfig is the part of the shared config the agent reads.
type sharedConfig struct {
	Deployment struct {
		Name string `xml:"name,attr"`
	} `xml:"Deployment"`
	Role struct {
		Name string `xml:"name,attr"`
	} `xml:"Role"`
	Instances []struct {
		ID string `xml:"id,attr"`
	} `xml:"Instances>Instance"`
}

// instance is the part of the IMDS instance document the agent reads.
type instance struct {
	Compute struct {
		SubscriptionID    string `json:"subscriptionId"`
		ResourceGroupName string `json:"resourceGroupName"`
		VMID              string `json:"vmId"`
		Offer             string `json:"offer"`
	} `json:"compute"`
}

// parseGoalState returns the container id and the request target of
// RoleInstance[0]'s SharedConfig URL.
func parseGoalState(body []byte) (containerID, sharedConfigTarget string, err error) {
	var gs goalState
	if err := decodeXML(body, &gs); err != nil {
		return "", "", fmt.Errorf("goal state: %w", err)
	}
	if len(gs.Container.RoleInstances) == 0 {
		return "", "", errors.New("goal state: no RoleInstance")
	}
	raw := strings.TrimSpace(gs.Container.RoleInstances[0].SharedConfig)
	u, err := url.Parse(raw)
	if err != nil || raw == "" || u.Path == "" {
		return "", "", fmt.Errorf("goal state: SharedConfig URL %.200q is not usable", raw)
	}
	return strings.TrimSpace(gs.Container.ContainerID), u.RequestURI(), nil
}

// parseSharedConfig returns tenant (Deployment@name), role (Role@name) and
// role instance (the first Instance@id).
func parseSharedConfig(body []byte) (tenant, role, roleInstance string, err error) {
	var sc sharedConfig
	if err := decodeXML(body, &sc); err != nil {
		return "", "", "", fmt.Errorf("shared config: %w", err)
	}
	if len(sc.Instances) > 0 {
		roleInstance = sc.Instances[0].ID
	}
	return sc.Deployment.Name, sc.Role.Name, roleInstance, nil
}

// decodeXML parses an XML document already decoded to UTF-8 (the
// response's charset was applied by hostconn.DecodeCharset), whatever its
// declaration says.
func decodeXML(body []byte, v any) error {
	d := xml.NewDecoder(bytes.NewReader(body))
	d.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	return d.Decode(v)
}

// hostCaller makes one call to the host; hostconn.Client implements it.
type hostCaller interface {
	Do(ctx context.Context, method, target string, fields []msp.Field, body []byte, key *msp.Key) (*hostconn.Response, error)
}

// fetchMetadata refreshes the host metadata (§6.2): the goal state and the
// shared config from the WireServer, then the IMDS instance document. key,
// when not nil, signs the three calls. The shared config is asked of the
// configured WireServer at the target of the URL the goal state names,
// never of the host that URL names.
func fetchMetadata(ctx context.Context, ws, imds hostCaller, key *msp.Key) (Metadata, error) {
	version := []msp.Field{{Name: msp.HeaderVersion, Value: msp.WireServerAPIVersion}}
	body, err := get(ctx, ws, msp.GoalStatePath, version, key)
	if err != nil {
		return Metadata{}, err
	}
	var md Metadata
	var target string
	if md.ContainerID, target, err = parseGoalState(body); err != nil {
		return Metadata{}, err
	}
	if body, err = get(ctx, ws, target, version, key); err != nil {
		return Metadata{}, err
	}
	if md.TenantName, md.RoleName, md.RoleInstanceName, err = parseSharedConfig(body); err != nil {
		return Metadata{}, err
	}
	body, err = get(ctx, imds, msp.IMDSInstancePath, []msp.Field{{Name: msp.HeaderMetadata, Value: msp.IMDSMetadataValue}}, key)
	if err != nil {
		return Metadata{}, err
	}
	var in instance
	if err := json.Unmarshal(body, &in); err != nil {
		return Metadata{}, fmt.Errorf("instance metadata: %w", err)
	}
	md.SubscriptionID, md.ResourceGroupName, md.VMID = in.Compute.SubscriptionID, in.Compute.ResourceGroupName, in.Compute.VMID
	if in.Compute.Offer != "" {
		md.ImageOrigin = 1
	}
	for _, f := range []*string{&md.ContainerID, &md.TenantName, &md.RoleName, &md.RoleInstanceName,
		&md.SubscriptionID, &md.ResourceGroupName, &md.VMID} {
		if len(*f) > MaxMetadataBytes {
			return Metadata{}, fmt.Errorf("host metadata: a value of %d bytes (at most %d)", len(*f), MaxMetadataBytes)
		}
	}
	return md, nil
}

// MaxMetadataBytes bounds each metadata value the host hands out (ids and
// names of a few dozen bytes): a longer one fails the refresh rather than
// being repeated in every event.
const MaxMetadataBytes = 1024

// get performs one metadata GET: any 2xx is success; the body comes back
// decoded to UTF-8.
func get(ctx context.Context, c hostCaller, target string, fields []msp.Field, key *msp.Key) ([]byte, error) {
	r, err := c.Do(ctx, http.MethodGet, target, fields, nil, key)
	if err != nil {
		return nil, err
	}
	if !r.OK() {
		return nil, fmt.Errorf("GET %s returned status %d", target, r.Code)
	}
	return hostconn.DecodeCharset(r.Header.Get("Content-Type"), r.Body)
}
