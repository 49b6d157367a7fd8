package hostsim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opengpa/gpa/internal/serdejson"
)

// LoadSettings reads a proxyAgentSettings file (see ParseSettings).
func LoadSettings(path string) (ProxyAgentSettings, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return ProxyAgentSettings{}, err
	}
	s, err := ParseSettings(b)
	if err != nil {
		return ProxyAgentSettings{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// LoadProfiles reads inVMAccessControlProfile versions keyed by resource
// id. path is either a directory, whose *.json files each hold one version
// (id: the document's "id", else the file name without .json), or a file
// holding one version with an "id", or a JSON object mapping ids to
// versions. Any invalid document fails the whole load.
func LoadProfiles(path string) (map[string]ProfileVersion, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	out := map[string]ProfileVersion{}
	if fi.IsDir() {
		files, err := filepath.Glob(filepath.Join(path, "*.json"))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			p, err := ParseProfile(b)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			id := p.ID
			if id == "" {
				id = strings.TrimSuffix(filepath.Base(f), ".json")
			}
			out[id] = p
		}
		return out, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(serdejson.TrimBOM(b), &probe); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, single := probe["properties"]; single {
		p, err := ParseProfile(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if p.ID == "" {
			return nil, fmt.Errorf("%s: profile version has no id", path)
		}
		out[p.ID] = p
		return out, nil
	}
	for id, raw := range probe {
		p, err := ParseProfile(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: profile %s: %w", path, id, err)
		}
		out[id] = p
	}
	return out, nil
}
