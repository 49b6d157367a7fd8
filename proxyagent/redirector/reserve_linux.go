package redirector

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// reservedPortsPath is where the calling thread's network namespace keeps
// the ports the kernel never hands out as ephemeral ones.
const reservedPortsPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"

// ReservePorts adds ports to ip_local_reserved_ports of the calling
// thread's network namespace, keeping what is there. The bind guard stops a
// user from bind()ing the agent's listener port, but a listen() without a
// bind takes an ephemeral port without any bind hook: where the ephemeral
// range covers the listener's port (a "1024 65535" tuning), a user
// listening while the agent restarts could be given it. The connect hooks
// send nothing to such a socket in the agent's namespace (it lacks the
// agent's mark), so what this guards above all is the container listener,
// which the hooks cannot check, and the agent's own bind after a restart.
// Reserved, the port is never given out that way; explicit binds (the
// agent's) are not affected.
func ReservePorts(ports ...uint16) error {
	b, err := os.ReadFile(reservedPortsPath)
	if err != nil {
		return fmt.Errorf("reserve ports: %w", err)
	}
	list := strings.TrimSpace(string(b))
	var add []string
	for _, p := range ports {
		if p != 0 && !portListed(list, p) && !slices.Contains(add, strconv.Itoa(int(p))) {
			add = append(add, strconv.Itoa(int(p)))
		}
	}
	if len(add) == 0 {
		return nil
	}
	if list != "" {
		add = append([]string{list}, add...)
	}
	if err := os.WriteFile(reservedPortsPath, []byte(strings.Join(add, ",")), 0o644); err != nil {
		return fmt.Errorf("reserve ports: %w", err)
	}
	return nil
}

// portListed reports whether p is in a port list as the kernel prints it:
// ports and ranges ("3080,8000-8010"), comma-separated.
func portListed(list string, p uint16) bool {
	for item := range strings.SplitSeq(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(item), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if int(p) >= a && int(p) <= b {
			return true
		}
	}
	return false
}
