// Package serdejson reads and writes JSON as upstream's Rust serde_json
// does, where encoding/json differs: fields are read by their exact names
// (encoding/json also takes a key in other letter case, "LogFolder" for
// logFolder, which serde ignores as an unknown key), and '&', '<' and '>'
// are written as they are (encoding/json writes \u0026 and the like).
package serdejson

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
)

// Names are the JSON names of a struct type's fields.
type Names struct {
	list []string
	set  map[string]struct{}
}

// Of returns the JSON names of T's fields (its json tags; T must be a
// struct type).
func Of[T any]() Names {
	n := Names{set: map[string]struct{}{}}
	t := reflect.TypeFor[T]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		n.list = append(n.list, name)
		n.set[name] = struct{}{}
	}
	return n
}

// Like returns the name k spells in other letter case, under the Unicode
// simple folding encoding/json applies ("ſ" is "s"); "" for none.
func (n Names) Like(k string) string {
	for _, name := range n.list {
		if strings.EqualFold(k, name) {
			return name
		}
	}
	return ""
}

// DropMiscased removes from the JSON object data the keys that are one of
// n's names in other letter case, and returns them sorted. It returns data
// unchanged when nothing is removed or data is not an object (the caller's
// decoding reports that).
func (n Names) DropMiscased(data []byte) ([]byte, []string) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil {
		return data, nil
	}
	var dropped []string
	for k := range obj {
		if _, exact := n.set[k]; !exact && n.Like(k) != "" {
			dropped = append(dropped, k)
			delete(obj, k)
		}
	}
	if len(dropped) == 0 {
		return data, nil
	}
	slices.Sort(dropped)
	out, err := json.Marshal(obj)
	if err != nil {
		return data, nil
	}
	return out, dropped
}

// Marshal encodes v as serde_json writes it: no HTML escaping, no line
// feed at the end.
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'}), nil
}

// TrimBOM returns data without a leading UTF-8 byte order mark, which
// upstream strips before it reads JSON (and serde_json would refuse).
func TrimBOM(data []byte) []byte {
	return bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
}
