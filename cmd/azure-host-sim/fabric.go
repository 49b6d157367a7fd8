package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opengpa/gpa/hostsim"
)

// loadFabric publishes every <handler>-<version>.zip in dir (as
// packaging/package.sh names them) and applies the VM model in vmFile;
// either may be "".
func loadFabric(sim *hostsim.Sim, dir, vmFile string) error {
	if dir != "" {
		zips, err := filepath.Glob(filepath.Join(dir, "*.zip"))
		if err != nil {
			return err
		}
		for _, z := range zips {
			base := strings.TrimSuffix(filepath.Base(z), ".zip")
			i := strings.LastIndex(base, "-")
			if i <= 0 {
				return fmt.Errorf("%s: want <publisher>.<type>-<version>.zip", z)
			}
			data, err := os.ReadFile(z)
			if err != nil {
				return err
			}
			if err := sim.PublishPackage(base[:i], base[i+1:], data); err != nil {
				return fmt.Errorf("%s: %w", z, err)
			}
		}
	}
	if vmFile != "" {
		b, err := os.ReadFile(vmFile)
		if err != nil {
			return err
		}
		m, err := hostsim.ParseVMModel(b)
		if err != nil {
			return fmt.Errorf("%s: %w", vmFile, err)
		}
		if err := sim.SetVMModel(m); err != nil {
			return fmt.Errorf("%s: %w", vmFile, err)
		}
	}
	return nil
}

// instanceView prints the instance view of a running simulator, read from
// its control endpoint at addr, as indented JSON.
func instanceView(ctx context.Context, addr string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/instanceView", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /instanceView: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		return err
	}
	pretty.WriteByte('\n')
	_, err = out.Write(pretty.Bytes())
	return err
}
