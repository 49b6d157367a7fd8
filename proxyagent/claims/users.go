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

// userInfo is a uid's name and group names (primary first). transient
// marks an answer that a busy or failing name service gave, which is not
// cached.
type userInfo struct {
	name      string
	groups    []string
	expires   time.Time
	transient bool
}

// userCache maps uid to userInfo. mu guards m and reading: a uid being
// read has a channel there that closes when it is done, so concurrent
// connections of one new uid read the databases (and run the name
// service) once.
type userCache struct {
	mu      sync.Mutex
	m       map[uint32]userInfo
	reading map[uint32]chan struct{}
}

// lookup returns the cached user for uid, reading the databases when the
// entry is missing or expired.
func (c *userCache) lookup(r *Resolver, uid uint32) userInfo {
	c.mu.Lock()
	for {
		u, ok := c.m[uid]
		if ok && time.Now().Before(u.expires) {
			c.mu.Unlock()
			return u
		}
		done, busy := c.reading[uid]
		if !busy {
			break
		}
		c.mu.Unlock()
		<-done
		c.mu.Lock()
	}
	done := make(chan struct{})
	if c.reading == nil {
		c.reading = make(map[uint32]chan struct{})
	}
	c.reading[uid] = done
	c.mu.Unlock()

	u := r.readUser(uid)
	ttl := r.UserCacheTTL
	if ttl <= 0 {
		ttl = DefaultUserCacheTTL
	}
	u.expires = time.Now().Add(ttl)
	c.mu.Lock()
	if !u.transient {
		if c.m == nil || len(c.m) >= maxCachedUsers {
			c.m = make(map[uint32]userInfo)
		}
		c.m[uid] = u
	}
	delete(c.reading, uid)
	close(done)
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

// NameServiceTimeout bounds one name-service lookup (its commands
// together), waiting for a turn included.
const NameServiceTimeout = 2 * time.Second

// nameServiceTurns bounds the name-service commands running at once, so
// many new uids at once (a user's subordinate uids) cannot fork without
// bound.
var nameServiceTurns = make(chan struct{}, 4)

// nssUser asks the name service for a uid the files do not name, as
// getpwuid and getgrouplist would (the agent is a static binary without
// libc's NSS): `getent passwd UID` for the name and primary group, `id -G
// -- NAME` for the group ids (primary first) and `getent group GID...`
// for their names (which may hold spaces, as directory groups'
// "domain users@contoso.com" do). A uid it does not know either, or a
// query that fails, gets the name "undefined" and no groups; a lookup
// that found no turn or timed out is not cached.
func (r *Resolver) nssUser(uid uint32) userInfo {
	unknown := userInfo{name: Undefined, groups: []string{}}
	run := r.NameService
	if run == nil {
		run = runNameService
	}
	ctx, cancel := context.WithTimeout(context.Background(), NameServiceTimeout)
	defer cancel()
	select {
	case nameServiceTurns <- struct{}{}:
		defer func() { <-nameServiceTurns }()
	case <-ctx.Done():
		unknown.transient = true
		return unknown
	}
	want := strconv.FormatUint(uint64(uid), 10)
	out, err := run(ctx, "getent", "passwd", want)
	if err != nil {
		unknown.transient = ctx.Err() != nil
		return unknown
	}
	f := strings.Split(strings.TrimRight(string(out), "\n"), ":")
	if len(f) < 4 || f[0] == "" || strings.ContainsAny(f[0], "\n") || f[2] != want {
		return unknown
	}
	u := userInfo{name: validUTF8(f[0]), groups: []string{}}
	out, err = run(ctx, "id", "-G", "--", f[0])
	if err != nil {
		u.transient = ctx.Err() != nil
		return u
	}
	gids := strings.Fields(string(out))
	for _, g := range gids {
		if _, err := strconv.ParseUint(g, 10, 32); err != nil {
			return u
		}
	}
	if len(gids) == 0 {
		return u
	}
	out, err = run(ctx, "getent", append([]string{"group"}, gids...)...)
	if err != nil && len(out) == 0 {
		u.transient = ctx.Err() != nil
		return u
	}
	names := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if g := strings.Split(line, ":"); len(g) >= 3 && g[0] != "" {
			names[g[2]] = g[0]
		}
	}
	seen := map[string]bool{}
	for _, g := range gids {
		if n, ok := names[g]; ok && !seen[g] {
			seen[g] = true
			u.groups = append(u.groups, validUTF8(n))
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
