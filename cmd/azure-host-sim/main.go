// Command azure-host-sim runs the simulated Azure host (package hostsim):
// WireServer, IMDS and HostGAPlugin on configurable addresses, plus a
// loopback control endpoint for tests. It logs to stderr and exits cleanly
// on SIGTERM or SIGINT.
//
//	azure-host-sim -settings proxyagent.json -profiles profiles/ \
//	    -wireserver 168.63.129.16:80 -imds 169.254.169.254:80 \
//	    -hostga 168.63.129.16:32526 -control 127.0.0.1:8930 \
//	    [-storage 127.0.0.1:8931 -packages dist/ -vm vm.json]
//	azure-host-sim instance-view [-control 127.0.0.1:8930]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/version"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "instance-view" {
		fs := flag.NewFlagSet("instance-view", flag.ExitOnError)
		addr := fs.String("control", "127.0.0.1:8930", "the simulator's control endpoint")
		fs.Parse(os.Args[2:])
		if err := instanceView(ctx, *addr, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "azure-host-sim instance-view:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "azure-host-sim:", err)
		os.Exit(2)
	}
}

// run parses args, serves until ctx ends, then shuts down.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("azure-host-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		wireServer  = fs.String("wireserver", msp.WireServerAddr.String(), "WireServer listen address")
		imds        = fs.String("imds", msp.IMDSAddr.String(), "IMDS listen address")
		hostGA      = fs.String("hostga", msp.HostGAPluginAddr.String(), "HostGAPlugin listen address")
		controlAddr = fs.String("control", "127.0.0.1:8930", "control endpoint listen address (loopback only)")
		settings    = fs.String("settings", "", "proxyAgentSettings JSON file (bare, or a VM model holding securityProfile.proxyAgentSettings)")
		profiles    = fs.String("profiles", "", "inVMAccessControlProfile versions: a directory of *.json or one JSON file")
		statusVer   = fs.String("status-version", hostsim.StatusV2, `secure-channel status shape: "2.0" or "1.0"`)
		rateLimit   = fs.Int("imds-rate-limit", hostsim.DefaultIMDSRateLimit, "IMDS requests per second per client IP (0 disables)")
		skew        = fs.Duration("date-skew", hostsim.DefaultDateSkew, "accepted x-ms-azure-host-date skew")
		journalSize = fs.Int("journal-size", hostsim.DefaultJournalSize, "journal capacity (entries)")
		presetKey   = fs.String("preset-key-file", "", "Key JSON file latched at start (tests only)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		storage     = fs.String("storage", "127.0.0.1:8931", "storage account listen address (extension packages, status blob)")
		packages    = fs.String("packages", "", "directory of extension packages <publisher>.<type>-<version>.zip to publish")
		vmModel     = fs.String("vm", "", "VM model JSON (extension resources, securityProfile) to apply at start")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	cfg := hostsim.Config{
		WireServerAddr: *wireServer, IMDSAddr: *imds, HostGAAddr: *hostGA, ControlAddr: *controlAddr,
		StatusVersion: *statusVer, DateSkew: *skew, JournalSize: *journalSize, Logger: log,
		IMDSRateLimit: *rateLimit, StorageAddr: *storage,
	}
	if *rateLimit <= 0 {
		cfg.IMDSRateLimit = -1
	}
	if *skew <= 0 {
		return errors.New("-date-skew must be positive")
	}
	var err error
	if *settings != "" {
		if cfg.Settings, err = hostsim.LoadSettings(*settings); err != nil {
			return err
		}
	}
	if *profiles != "" {
		if cfg.Profiles, err = hostsim.LoadProfiles(*profiles); err != nil {
			return err
		}
	}
	if *presetKey != "" {
		b, err := os.ReadFile(*presetKey)
		if err != nil {
			return err
		}
		if cfg.PresetKey, err = msp.ParseIssuedKey(b); err != nil {
			return fmt.Errorf("%s: %w", *presetKey, err)
		}
	}
	sim, err := hostsim.New(cfg)
	if err != nil {
		return err
	}
	if err := sim.Start(); err != nil {
		return err
	}
	if err := loadFabric(sim, *packages, *vmModel); err != nil {
		sim.Close()
		return err
	}
	log.Info("azure-host-sim running", "version", version.Version, "statusVersion", *statusVer,
		"profiles", len(cfg.Profiles), "imdsRateLimit", *rateLimit, "dateSkew", *skew)
	<-ctx.Done()
	log.Info("azure-host-sim stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = sim.Shutdown(sctx)
	sim.Close() // whatever Shutdown left open after the deadline
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
