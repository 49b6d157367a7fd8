package handler

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/installpath"
)

// RenderUnit returns the unit file to install for layout l: the bundled
// template (upstream's ExecStart=/usr/sbin/azure-proxy-agent, which reads
// /etc/azure/proxy-agent.json), with ExecStart= naming the binary and the
// config (--config) where l puts them (under l.Root, or /opt with a
// read-only /usr). Every other line is unchanged.
func RenderUnit(template []byte, l Layout) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(template))
	for sc.Scan() {
		line := sc.Text()
		if (l.Root != "" || l.UsrReadOnly) && strings.TrimSpace(line) == "ExecStart="+installpath.AgentBinary {
			line = "ExecStart=" + l.AgentBinary() + " --config " + l.AgentConfig()
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// UnitExec is what a supervisor needs from a unit file: the command line of
// ExecStart= and the delay of RestartSec=.
type UnitExec struct {
	Argv       []string
	RestartSec time.Duration
}

// ParseUnitExec reads ExecStart= (the last one wins; a leading "-", "@",
// "+" or "!" prefix is dropped; arguments are split on spaces, without
// quoting) and RestartSec= (seconds, default 100ms as in systemd).
func ParseUnitExec(unit []byte) (UnitExec, error) {
	u := UnitExec{RestartSec: 100 * time.Millisecond}
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "ExecStart":
			v = strings.TrimLeft(strings.TrimSpace(v), "-@+!:")
			u.Argv = strings.Fields(v)
		case "RestartSec":
			v = strings.TrimSpace(v)
			if d, err := time.ParseDuration(v); err == nil {
				u.RestartSec = d
			} else if d, err := time.ParseDuration(v + "s"); err == nil {
				u.RestartSec = d
			}
		}
	}
	if len(u.Argv) == 0 {
		return u, fmt.Errorf("unit has no ExecStart")
	}
	return u, nil
}
