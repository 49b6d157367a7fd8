package claims

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxCachedUsers bounds the uid cache; when full it is emptied.
const maxCachedUsers = 1024

// userInfo is a uid's name and group names (primary first).
type userInfo struct {
	name    string
	groups  []string
	expires time.Time
}

// userCache maps uid to userInfo. mu guards m.
type userCache struct {
	mu sync.Mutex
	m  map[uint32]userInfo
}

// lookup returns the cached user for uid, reading the databases when the
// entry is missing or expired.
func (c *userCache) lookup(r *Resolver, uid uint32) userInfo {
	now := time.Now()
	c.mu.Lock()
	u, ok := c.m[uid]
	c.mu.Unlock()
	if ok && now.Before(u.expires) {
		return u
	}
	u = r.readUser(uid)
	ttl := r.UserCacheTTL
	if ttl <= 0 {
		ttl = DefaultUserCacheTTL
	}
	u.expires = now.Add(ttl)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedUsers {
		c.m = make(map[uint32]userInfo)
	}
	c.m[uid] = u
	c.mu.Unlock()
	return u
}

// readUser reads uid's name, primary gid and groups from the databases.
// An unknown uid gets the name "undefined" and no groups.
func (r *Resolver) readUser(uid uint32) userInfo {
	passwd, group := r.PasswdFile, r.GroupFile
	if passwd == "" {
		passwd = DefaultPasswdFile
	}
	if group == "" {
		group = DefaultGroupFile
	}
	want := strconv.FormatUint(uint64(uid), 10)
	var name, gid string
	scanColonFile(passwd, func(f []string) bool {
		if len(f) >= 4 && f[2] == want && f[0] != "" {
			name, gid = f[0], f[3]
			return false
		}
		return true
	})
	if name == "" {
		return r.nssUser(uid)
	}
	var primary string
	var others []string
	seen := map[string]bool{}
	scanColonFile(group, func(f []string) bool {
		if len(f) < 4 || f[0] == "" || seen[f[0]] {
			return true
		}
		if f[2] == gid && primary == "" {
			primary = validUTF8(f[0])
			seen[f[0]] = true
			return true
		}
		for _, m := range strings.Split(f[3], ",") {
			if strings.TrimSpace(m) == name {
				others = append(others, validUTF8(f[0]))
				seen[f[0]] = true
				break
			}
		}
		return true
	})
	groups := make([]string, 0, 1+len(others))
	if primary != "" {
		groups = append(groups, primary)
	}
	groups = append(groups, others...)
	return userInfo{name: validUTF8(name), groups: groups}
}

// NameServiceTimeout bounds each name-service command.
const NameServiceTimeout = 2 * time.Second

// nssUser asks the name service for a uid the files do not name, as
// getpwuid and getgrouplist would (the agent is a static binary without
// libc's NSS): `getent passwd UID` for the name, `id -Gn -- NAME` for the
// group names, primary first. A uid it does not know either, or a query
// that fails or times out, gets the name "undefined" and no groups.
func (r *Resolver) nssUser(uid uint32) userInfo {
	unknown := userInfo{name: Undefined, groups: []string{}}
	run := r.NameService
	if run == nil {
		run = runNameService
	}
	ctx, cancel := context.WithTimeout(context.Background(), NameServiceTimeout)
	defer cancel()
	out, err := run(ctx, "getent", "passwd", strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return unknown
	}
	f := strings.Split(strings.TrimRight(string(out), "\n"), ":")
	if len(f) < 4 || f[0] == "" || strings.ContainsAny(f[0], "\n") || f[2] != strconv.FormatUint(uint64(uid), 10) {
		return unknown
	}
	u := userInfo{name: validUTF8(f[0]), groups: []string{}}
	if out, err := run(ctx, "id", "-Gn", "--", f[0]); err == nil {
		for _, g := range strings.Fields(string(out)) {
			u.groups = append(u.groups, validUTF8(g))
		}
	}
	return u
}

// runNameService runs name with args and returns its standard output.
func runNameService(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).Output()
}

// scanColonFile calls fn with the colon-separated fields of each
// non-comment line of path until fn returns false. A missing or unreadable
// file is treated as empty.
func scanColonFile(path string, fn func(fields []string) bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return
		}
	}
}
