package provision

import (
	"github.com/opengpa/gpa/internal/serdejson"

	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Header names of the provisioning query.
const (
	HeaderTimeTick = "x-ms-azure-time-tick"
	HeaderNotify   = "x-ms-azure-notify"
)

// Path is the local provisioning endpoint.
const Path = "/provision"

// pollGap is the pause between two queries of `--status --wait`.
const pollGap = 100 * time.Millisecond

// State is the JSON body of GET /provision.
type State struct {
	Finished     bool   `json:"finished"`
	ErrorMessage string `json:"errorMessage"`
}

// QueryStatus implements `azure-proxy-agent --status [--wait N]` against
// the listener at addr (host:port, normally 127.0.0.1:3080). It queries
// GET /provision with Metadata, the time tick of its own start and, on the
// first query only, x-ms-azure-notify; while not finished and less than
// wait has passed since its start it queries again every 100 ms.
//
// Exit codes: 0 finished without error; 2 finished with an error, message
// is the error text to print; 1 not finished (or timed out), message is the
// last query failure ("Failed to query the current provision state with
// error: ...") or "".
func QueryStatus(addr string, wait time.Duration) (exitCode int, message string) {
	start := time.Now()
	tick := start.UnixNano()
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	first := true
	var lastErr string
	for {
		remaining := wait - time.Since(start)
		client.Timeout = min(max(remaining, time.Second), 5*time.Second)
		st, err := queryOnce(client, addr, tick, first)
		first = false
		if err != nil {
			lastErr = fmt.Sprintf("Failed to query the current provision state with error: %v.", err)
			st = State{}
		}
		if st.Finished {
			if st.ErrorMessage == "" {
				return 0, ""
			}
			return 2, st.ErrorMessage
		}
		if time.Since(start) <= wait {
			time.Sleep(pollGap)
			continue
		}
		return 1, lastErr
	}
}

func queryOnce(client *http.Client, addr string, tick int64, notify bool) (State, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+Path, nil)
	if err != nil {
		return State{}, err
	}
	req.Header.Set("Metadata", "true")
	req.Header.Set(HeaderTimeTick, strconv.FormatInt(tick, 10))
	if notify {
		req.Header.Set(HeaderNotify, "true")
	}
	resp, err := client.Do(req)
	if err != nil {
		return State{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return State{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return State{}, fmt.Errorf("GET %s returned status %d", Path, resp.StatusCode)
	}
	var st State
	if err := json.Unmarshal(body, &st); err != nil {
		return State{}, fmt.Errorf("invalid provision state: %v", err)
	}
	return st, nil
}

// Querier answers a provisioning query for a caller that started at
// timeTick (Unix nanoseconds, 0 when absent); notify asks the key keeper to
// poll now. Provisioner implements it.
type Querier interface {
	Query(timeTick int64, notify bool) (finished bool, errorMessage string)
}

// Serve answers GET /provision (protocol.md §5.4): 400 with Connection:
// close and an empty body without a Metadata header, else 200
// application/json; charset=utf-8 with State (serde's escaping: < > & are
// left as they are). It is the endpoint's one implementation; the proxy
// listener calls it. It returns the status written and, for a failure, the
// reason to audit.
func Serve(w http.ResponseWriter, r *http.Request, q Querier) (status int, errText string) {
	if _, ok := r.Header["Metadata"]; !ok {
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusBadRequest)
		return http.StatusBadRequest, "missing Metadata header"
	}
	tick := ParseTimeTick(r.Header.Get(HeaderTimeTick))
	_, notify := r.Header[http.CanonicalHeaderKey(HeaderNotify)]
	finished, msg := q.Query(tick, notify)
	body, err := serdejson.Marshal(State{Finished: finished, ErrorMessage: msg})
	if err != nil {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusInternalServerError)
		return http.StatusInternalServerError, "encode provision state: " + err.Error()
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	return http.StatusOK, ""
}
