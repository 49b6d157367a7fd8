// Command standin-agent is a TEST-ONLY STAND-IN for cmd/azure-proxy-agent,
// to be replaced by the real agent in the handler's conformance tests once
// that builds. It implements only the contract the extension relies on:
//
//	--version          print internal/version.Version, exit 0
//	--config PATH      run: write <statusFolder>/status.json (protocol.md
//	                   §5.1) at once and every second, and answer
//	                   GET /gpa-aggregated-status (Metadata header
//	                   required) on listenAddress when set
//	--status [--wait N] exit 0
//
// Test knobs in the config: "standinStatus" (overall status to report,
// default SUCCESS) and "standinExit" (exit 1 immediately, a broken agent).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/version"
)

type config struct {
	StatusFolder  string `json:"statusFolder"`
	ListenAddress string `json:"listenAddress"`
	StandinStatus string `json:"standinStatus"`
	StandinExit   bool   `json:"standinExit"`
}

func aggregate(c config) []byte {
	st := c.StandinStatus
	if st == "" {
		st = "SUCCESS"
	}
	mod := "RUNNING"
	if st != "SUCCESS" {
		mod = "STOPPED"
	}
	doc := map[string]any{
		"timestamp": time.Now().UTC().Format("2006-01-02T15:04:05.000"),
		"proxyAgentStatus": map[string]any{
			"version":       version.Version,
			"status":        st,
			"monitorStatus": map[string]any{"status": "RUNNING", "message": "stand-in"},
			"keyLatchStatus": map[string]any{"status": "RUNNING", "message": "stand-in key latch",
				"states": map[string]any{"secureChannelState": "WireServer Enforce -  IMDS Enforce - HostGA Enforce", "keyGuid": "00000000-0000-0000-0000-000000000000"}},
			"ebpfProgramStatus":     map[string]any{"status": mod, "message": "stand-in redirector"},
			"proxyListenerStatus":   map[string]any{"status": "RUNNING", "message": "stand-in listener"},
			"telemetryLoggerStatus": map[string]any{"status": "UNKNOWN", "message": "stand-in"},
			"proxyConnectionsCount": 3,
		},
		"proxyConnectionSummary": []map[string]any{{"userName": "root", "ip": "168.63.129.16", "port": 80,
			"processCmdLine": "waagent", "responseStatus": "200 OK", "count": 3, "userGroups": []string{"root"}, "processFullPath": "/usr/bin/python3"}},
		"failedAuthenticateSummary": []any{},
	}
	b, _ := json.Marshal(doc)
	return b
}

func main() {
	showVersion := flag.Bool("version", false, "print version")
	cfgPath := flag.String("config", "", "config file")
	status := flag.Bool("status", false, "provisioning status")
	flag.Int("wait", 0, "seconds to wait with --status")
	flag.Parse()
	switch {
	case *showVersion:
		fmt.Println(version.Version)
		return
	case *status:
		return
	}
	data, err := os.ReadFile(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin-agent:", err)
		os.Exit(1)
	}
	var c config
	if err := json.Unmarshal(data, &c); err != nil {
		fmt.Fprintln(os.Stderr, "standin-agent: bad config:", err)
		os.Exit(1)
	}
	if c.StandinExit {
		fmt.Fprintln(os.Stderr, "standin-agent: configured to fail")
		os.Exit(1)
	}
	if c.ListenAddress != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/gpa-aggregated-status", func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Metadata") == "" {
				http.Error(w, "missing Metadata", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Write(aggregate(c))
		})
		go http.ListenAndServe(c.ListenAddress, mux)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	write := func() {
		os.MkdirAll(c.StatusFolder, 0o755)
		p := filepath.Join(c.StatusFolder, "status.json")
		os.WriteFile(p+".tmp", aggregate(c), 0o640)
		os.Rename(p+".tmp", p)
	}
	write()
	t := time.NewTicker(time.Second)
	for {
		select {
		case <-sig:
			return
		case <-t.C:
			write()
		}
	}
}
