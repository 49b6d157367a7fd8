package handler

import (
	"os"
	"strconv"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Environment variables that tune the handler. Production leaves them
// unset; tests and demos shorten intervals and move addresses.
const (
	EnvConfigOverlay       = "GPA_CONFIG_OVERLAY"       // JSON merged over the installed agent config
	EnvMonitorInterval     = "GPA_MONITOR_INTERVAL"     // Go duration, default 15s
	EnvHeartbeatInterval   = "GPA_HEARTBEAT_INTERVAL"   // default 5m
	EnvAggregateURL        = "GPA_AGGREGATE_STATUS_URL" // default http://168.63.129.16:80/gpa-aggregated-status
	EnvHTTPTimeout         = "GPA_HTTP_TIMEOUT"         // default 10s
	EnvErrorThreshold      = "GPA_ERROR_THRESHOLD"      // consecutive failures at the monitor interval before error, default 20
	EnvRetryInterval       = "GPA_RETRY_INTERVAL"       // monitor spawn / update.tag retries, default 15s
	EnvServiceSettle       = "GPA_SERVICE_SETTLE"       // how long a started agent must stay up, default 5s
	EnvServiceManager      = "GPA_SERVICE_MANAGER"      // "systemd", "supervisor" or empty for automatic
	EnvStaleAfter          = "GPA_STALE_AFTER"          // aggregate status age limit, default 5m
	EnvUpdateTagStaleAfter = "GPA_UPDATE_TAG_STALE_AFTER"
	EnvUpdateRetryInterval = "GPA_UPDATE_RETRY_INTERVAL" // first retry of a failed agent upgrade, default 1m
)

// DefaultAggregateURL is where the monitor asks the agent for its
// aggregate status; the agent's eBPF redirect delivers it to the agent.
var DefaultAggregateURL = "http://" + msp.WireServerAddr.String() + msp.AggregateStatusPath

// Options are the handler's tunables.
type Options struct {
	MonitorInterval   time.Duration
	HeartbeatInterval time.Duration
	AggregateURL      string
	HTTPTimeout       time.Duration
	// ErrorThreshold is how many consecutive failed observations at
	// MonitorInterval turn the status to error; faster polling needs as
	// long a failure streak (see StatusState).
	ErrorThreshold      int
	RetryInterval       time.Duration
	ServiceSettle       time.Duration
	ServiceManager      string
	ConfigOverlay       string
	StaleAfter          time.Duration
	UpdateTagStaleAfter time.Duration
	// UpdateRetryInterval is how long the monitor waits before it retries
	// an agent upgrade that failed; each further failure doubles the wait,
	// up to 64 times this value.
	UpdateRetryInterval time.Duration
}

// DefaultOptions are upstream's values.
func DefaultOptions() Options {
	return Options{
		MonitorInterval:     15 * time.Second,
		HeartbeatInterval:   5 * time.Minute,
		AggregateURL:        DefaultAggregateURL,
		HTTPTimeout:         10 * time.Second,
		ErrorThreshold:      20,
		RetryInterval:       15 * time.Second,
		ServiceSettle:       5 * time.Second,
		StaleAfter:          5 * time.Minute,
		UpdateTagStaleAfter: 2 * time.Hour,
		UpdateRetryInterval: time.Minute,
	}
}

// OptionsFromEnv returns DefaultOptions with every valid override from the
// environment applied; invalid values are ignored.
func OptionsFromEnv(getenv func(string) string) Options {
	if getenv == nil {
		getenv = os.Getenv
	}
	o := DefaultOptions()
	dur := func(key string, dst *time.Duration) {
		if d, err := time.ParseDuration(getenv(key)); err == nil && d > 0 {
			*dst = d
		}
	}
	dur(EnvMonitorInterval, &o.MonitorInterval)
	dur(EnvHeartbeatInterval, &o.HeartbeatInterval)
	dur(EnvHTTPTimeout, &o.HTTPTimeout)
	dur(EnvRetryInterval, &o.RetryInterval)
	dur(EnvServiceSettle, &o.ServiceSettle)
	dur(EnvStaleAfter, &o.StaleAfter)
	dur(EnvUpdateTagStaleAfter, &o.UpdateTagStaleAfter)
	dur(EnvUpdateRetryInterval, &o.UpdateRetryInterval)
	if v := getenv(EnvAggregateURL); v != "" {
		o.AggregateURL = v
	}
	if n, err := strconv.Atoi(getenv(EnvErrorThreshold)); err == nil && n > 0 {
		o.ErrorThreshold = n
	}
	o.ServiceManager = getenv(EnvServiceManager)
	o.ConfigOverlay = getenv(EnvConfigOverlay)
	return o
}
