package keykeeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opengpa/gpa/internal/atomicfile"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// safeGUID reports whether g can name a key file and travel in the
// attestation's request target and the signature header: 1–128 letters,
// digits or any of "-_.~{}". The spec requires no GUID format (a host may
// name its key "key-1"), so any such name is used as upstream uses it;
// anything else, in particular a path separator, white space or a control
// character, never reaches the file system or the wire.
func safeGUID(g string) bool {
	if g == "" || len(g) > 128 {
		return false
	}
	for i := 0; i < len(g); i++ {
		c := g[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c == '-', c == '_', c == '.', c == '~', c == '{', c == '}':
		default:
			return false
		}
	}
	return true
}

// keyPath returns <dir>/<guid>.key, or an error for a GUID that cannot be
// a file name.
func keyPath(dir, guid string) (string, error) {
	if !safeGUID(guid) {
		return "", fmt.Errorf("key guid %q cannot name a key file", guid)
	}
	return filepath.Join(dir, guid+".key"), nil
}

// saveKey writes k to <dir>/<guid>.key as pretty JSON in upstream's field
// order, through <guid>.tmp and a rename, with mode 0600 from creation on.
func saveKey(dir string, k *msp.IssuedKey) error {
	path, err := keyPath(dir, k.GUID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return errors.New("encode key")
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// loadKey reads <dir>/<guid>.key. The file must parse and name the same
// GUID; errors never contain key material.
func loadKey(dir, guid string) (*msp.IssuedKey, error) {
	path, err := keyPath(dir, guid)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := msp.ParseIssuedKey(data)
	if err != nil {
		return nil, err
	}
	if k.GUID != guid {
		return nil, fmt.Errorf("key file %s names guid %q", filepath.Base(path), k.GUID)
	}
	return k, nil
}

// ensureDir creates dir if missing and sets it to root:root 0700. Errors
// are returned for logging only; the key keeper goes on regardless, as
// upstream does.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var errs []error
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 0, 0); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
