package extension

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/opengpa/gpa/internal/serdejson"
)

// HandlerSettings is one runtimeSettings[].handlerSettings object as waagent
// writes it. ProtectedSettings stays the base64 text of the encrypted
// payload; this package never decrypts it.
type HandlerSettings struct {
	PublicSettings                  json.RawMessage `json:"publicSettings,omitempty"`
	ProtectedSettings               string          `json:"protectedSettings,omitempty"`
	ProtectedSettingsCertThumbprint string          `json:"protectedSettingsCertThumbprint,omitempty"`
}

// SettingsPath returns <configFolder>/<seq>.settings.
func SettingsPath(configFolder string, seq int) string {
	return filepath.Join(configFolder, strconv.Itoa(seq)+".settings")
}

// ParseSettings parses a settings file. An empty (0-byte or blank) file,
// which waagent writes for a handler without settings, yields the zero
// HandlerSettings and no error, as do missing runtimeSettings,
// handlerSettings, public or protected sections. Only malformed JSON is
// an error.
func ParseSettings(data []byte) (HandlerSettings, error) {
	data = serdejson.TrimBOM(data)
	if len(bytes.TrimSpace(data)) == 0 {
		return HandlerSettings{}, nil
	}
	var doc struct {
		RuntimeSettings []struct {
			HandlerSettings *HandlerSettings `json:"handlerSettings"`
		} `json:"runtimeSettings"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return HandlerSettings{}, fmt.Errorf("extension: malformed settings: %v", err)
	}
	if len(doc.RuntimeSettings) == 0 || doc.RuntimeSettings[0].HandlerSettings == nil {
		return HandlerSettings{}, nil
	}
	hs := *doc.RuntimeSettings[0].HandlerSettings
	if string(hs.PublicSettings) == "null" {
		hs.PublicSettings = nil
	}
	return hs, nil
}

// ReadSettings reads <configFolder>/<seq>.settings. A missing file yields
// the zero HandlerSettings and no error, like an empty one.
func ReadSettings(configFolder string, seq int) (HandlerSettings, error) {
	data, err := os.ReadFile(SettingsPath(configFolder, seq))
	if errors.Is(err, os.ErrNotExist) {
		return HandlerSettings{}, nil
	}
	if err != nil {
		return HandlerSettings{}, fmt.Errorf("extension: read settings: %w", err)
	}
	return ParseSettings(data)
}
