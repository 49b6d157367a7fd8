// Package manifest describes the extension's HandlerManifest.json, the
// file waagent reads to learn the handler's command lines and options, and
// lints it against the rules waagent applies (azurelinuxagent/ga/
// exthandlers.py HandlerManifest, ResourceLimits).
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opengpa/gpa/internal/installpath"
	"github.com/opengpa/gpa/internal/serdejson"
)

// FileName is the manifest's name at the root of the extension package.
const FileName = "HandlerManifest.json"

// AgentCPUQuotaPercentage is the CPU quota the proxy agent sets on its own
// unit (CPUQuota=15%). The manifest lists the same value for the service so
// waagent and the agent never fight over it.
const AgentCPUQuotaPercentage = 15

// ServiceUnit is the systemd unit name waagent must track for the agent.
// waagent builds drop-in directories as "<name>.d", so the name carries
// the .service suffix.
const ServiceUnit = installpath.UnitName

// Commands are the waagent commands the manifest must map, with the script
// each one runs (relative to the handler root).
var Commands = map[string]string{
	"installCommand":   "./install.sh",
	"uninstallCommand": "./uninstall.sh",
	"updateCommand":    "./update.sh",
	"enableCommand":    "./enable.sh",
	"disableCommand":   "./disable.sh",
}

// Handler is the handlerManifest object.
type Handler struct {
	InstallCommand             string `json:"installCommand"`
	UninstallCommand           string `json:"uninstallCommand"`
	UpdateCommand              string `json:"updateCommand"`
	EnableCommand              string `json:"enableCommand"`
	DisableCommand             string `json:"disableCommand"`
	ResetStateCommand          string `json:"resetStateCommand,omitempty"`
	RebootAfterInstall         bool   `json:"rebootAfterInstall"`
	ReportHeartbeat            bool   `json:"reportHeartbeat"`
	UpdateMode                 string `json:"updateMode,omitempty"`
	ContinueOnUpdateFailure    bool   `json:"continueOnUpdateFailure"`
	SupportsMultipleExtensions bool   `json:"supportsMultipleExtensions"`
}

// Service is one resourceLimits.services entry.
type Service struct {
	Name               string   `json:"name"`
	CPUQuotaPercentage *float64 `json:"cpuQuotaPercentage,omitempty"`
}

// ResourceLimits is the top-level resourceLimits object.
type ResourceLimits struct {
	CPUQuotaPercentage *float64  `json:"cpuQuotaPercentage,omitempty"`
	MemoryQuotaInMB    *float64  `json:"memoryQuotaInMB,omitempty"`
	Services           []Service `json:"services,omitempty"`
}

// Manifest is element [0] of HandlerManifest.json, the only one waagent
// reads.
type Manifest struct {
	Name           string          `json:"name,omitempty"`
	Version        json.RawMessage `json:"version,omitempty"`
	Handler        Handler         `json:"handlerManifest"`
	ResourceLimits *ResourceLimits `json:"resourceLimits,omitempty"`
}

// UpdateWithInstall reports whether waagent runs the new version's install
// after an upgrade: true when updateMode is absent or "UpdateWithInstall"
// in any case, as waagent decides.
func (m Manifest) UpdateWithInstall() bool {
	return m.Handler.UpdateMode == "" || strings.EqualFold(m.Handler.UpdateMode, "UpdateWithInstall")
}

// Parse decodes a manifest file and returns its element [0].
func Parse(data []byte) (Manifest, error) {
	var ms []Manifest
	if err := json.Unmarshal(serdejson.TrimBOM(data), &ms); err != nil {
		return Manifest{}, fmt.Errorf("manifest: not a JSON array of manifests: %v", err)
	}
	if len(ms) == 0 {
		return Manifest{}, fmt.Errorf("manifest: empty array")
	}
	return ms[0], nil
}

var booleanFields = []string{"rebootAfterInstall", "reportHeartbeat", "continueOnUpdateFailure", "supportsMultipleExtensions"}

// Lint checks a manifest file the way waagent will read it and returns
// every problem found (nil when clean):
//   - the file is a non-empty JSON array whose [0] has a handlerManifest;
//   - the five command fields are present, relative, free of "..", and,
//     when root is not empty, name an existing executable file under root;
//   - boolean options are JSON booleans (waagent raises telemetry for
//     strings) and the multi-config key is spelled supportsMultipleExtensions;
//   - updateMode is set explicitly to UpdateWithInstall or UpdateWithoutInstall;
//   - reportHeartbeat is true (the monitor writes a heartbeat);
//   - resourceLimits.services lists azure-proxy-agent.service with
//     cpuQuotaPercentage equal to AgentCPUQuotaPercentage.
func Lint(data []byte, root string) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf("manifest: "+format, a...)) }

	var raw []map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		add("not a JSON array: %v", err)
		return errs
	}
	if len(raw) == 0 {
		add("empty array")
		return errs
	}
	hmRaw, ok := raw[0]["handlerManifest"]
	if !ok {
		add("[0].handlerManifest missing")
		return errs
	}
	var hm map[string]json.RawMessage
	if err := json.Unmarshal(hmRaw, &hm); err != nil {
		add("handlerManifest is not an object: %v", err)
		return errs
	}
	for _, f := range booleanFields {
		v, ok := hm[f]
		if !ok {
			continue
		}
		if s := string(bytes.TrimSpace(v)); s != "true" && s != "false" {
			add("%s must be a JSON boolean, got %s", f, s)
		}
	}
	if _, ok := hm["supportMultipleExtensions"]; ok {
		add("supportMultipleExtensions is misspelled (waagent reads supportsMultipleExtensions)")
	}
	m, err := Parse(data)
	if err != nil {
		add("%v", err)
		return errs
	}
	cmds := map[string]string{
		"installCommand":   m.Handler.InstallCommand,
		"uninstallCommand": m.Handler.UninstallCommand,
		"updateCommand":    m.Handler.UpdateCommand,
		"enableCommand":    m.Handler.EnableCommand,
		"disableCommand":   m.Handler.DisableCommand,
	}
	for _, name := range []string{"installCommand", "uninstallCommand", "updateCommand", "enableCommand", "disableCommand"} {
		if err := checkCommand(cmds[name], root); err != nil {
			add("%s: %v", name, err)
		}
	}
	switch {
	case m.Handler.UpdateMode == "":
		add("updateMode is not set explicitly (absent means UpdateWithInstall)")
	case !strings.EqualFold(m.Handler.UpdateMode, "UpdateWithInstall") && !strings.EqualFold(m.Handler.UpdateMode, "UpdateWithoutInstall"):
		add("updateMode %q is neither UpdateWithInstall nor UpdateWithoutInstall", m.Handler.UpdateMode)
	}
	if !m.Handler.ReportHeartbeat {
		add("reportHeartbeat must be true: the monitor writes a heartbeat")
	}
	found := false
	if m.ResourceLimits != nil {
		for _, s := range m.ResourceLimits.Services {
			if s.Name != ServiceUnit {
				continue
			}
			found = true
			if s.CPUQuotaPercentage == nil || *s.CPUQuotaPercentage != AgentCPUQuotaPercentage {
				add("service %s: cpuQuotaPercentage must equal the agent's own quota %d", ServiceUnit, AgentCPUQuotaPercentage)
			}
		}
	}
	if !found {
		add("resourceLimits.services has no entry for %s", ServiceUnit)
	}
	return errs
}

// checkCommand validates one command line: waagent strips a leading "/"
// and joins it to the handler root, and runs it through a shell from there.
func checkCommand(cmd, root string) error {
	cmd = strings.TrimSpace(cmd)
	if cmd == "" {
		return fmt.Errorf("missing")
	}
	prog := strings.Fields(cmd)[0]
	if strings.HasPrefix(prog, "/") {
		return fmt.Errorf("%q is absolute; waagent would strip the slash", prog)
	}
	clean := path.Clean(prog)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return fmt.Errorf("%q leaves the handler root", prog)
	}
	if root == "" {
		return nil
	}
	fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(clean)))
	if err != nil {
		return fmt.Errorf("%q does not resolve under the handler root: %v", prog, err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o100 == 0 {
		return fmt.Errorf("%q is not an executable file", prog)
	}
	return nil
}
