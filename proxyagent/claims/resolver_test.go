package claims

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/identity"
)

// statLine builds a /proc/<pid>/stat line with the given comm, ppid and
// start time (field 22); other fields are plausible constants.
func statLine(pid int, comm string, ppid uint32, start uint64) string {
	// Fields 3..21 then 22 (start time) then a few more.
	return fmt.Sprintf("%d (%s) S %d 100 100 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 %d 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
		pid, comm, ppid, start)
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name      string
		line      string
		wantComm  string
		wantPPID  uint32
		wantStart uint64
		wantErr   bool
	}{
		{"plain", statLine(42, "curl", 7, 12345), "curl", 7, 12345, false},
		{"spaces and parens in comm", statLine(42, "a b) S 9 (x", 8, 777), "a b) S 9 (x", 8, 777, false},
		{"empty comm", statLine(42, "", 8, 1), "", 8, 1, false},
		{"truncated", "42 (curl) S 7 100", "", 0, 0, true},
		{"no parens", "42 curl S 7", "", 0, 0, true},
		{"bad start", strings.Replace(statLine(42, "c", 1, 5), " 5 1000000", " x 1000000", 1), "", 0, 0, true},
		{"empty", "", "", 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseStat([]byte(tc.line))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want error", tc.line, st)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.Comm != tc.wantComm || st.PPID != tc.wantPPID || st.StartTime != tc.wantStart {
				t.Errorf("got %+v, want comm %q ppid %d start %d", st, tc.wantComm, tc.wantPPID, tc.wantStart)
			}
		})
	}
}

func TestFormatCmdLine(t *testing.T) {
	tests := []struct {
		name  string
		raw   string
		limit int
		want  string
	}{
		{"four of five", "a\x00b\x00c\x00d\x00e\x00", 100, "a b c d"},
		{"empty args dropped", "a\x00\x00\x00b\x00", 100, "a b"},
		{"empty", "", 100, ""},
		{"invalid utf8", "a\xff\x00b\x00", 100, "a\uFFFD b"},
		{"cut at space", "python3\x00-c\x00" + strings.Repeat("x", 50) + "\x00", 20, "python3 -c" + TruncatedSuffix},
		{"cut no space", strings.Repeat("y", 50), 20, TruncatedSuffix},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatCmdLine([]byte(tc.raw), tc.limit); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// fakeProc builds a procfs-like tree; each process has exe (symlink),
// cmdline and stat.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) *fakeProc { return &fakeProc{t: t, root: t.TempDir()} }

func (p *fakeProc) add(pid int, exe, cmdline string, ppid uint32, start uint64) {
	dir := filepath.Join(p.root, fmt.Sprint(pid))
	must(p.t, os.MkdirAll(dir, 0o755))
	if exe != "" {
		must(p.t, os.Symlink(exe, filepath.Join(dir, "exe")))
	}
	must(p.t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(cmdline), 0o644))
	must(p.t, os.WriteFile(filepath.Join(dir, "stat"), []byte(statLine(pid, filepath.Base(exe), ppid, start)), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeUserDB(t *testing.T) (passwd, group string) {
	dir := t.TempDir()
	passwd = filepath.Join(dir, "passwd")
	group = filepath.Join(dir, "group")
	must(t, os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\n# comment\n"+
		"alice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n"), 0o644))
	must(t, os.WriteFile(group, []byte("root:x:0:\nadm:x:4:alice,bob\nsudo:x:27:alice\n"+
		"alice:x:1000:\nbob:x:1001:\ndocker:x:999:bob, alice\n"), 0o644))
	return passwd, group
}

var client = netip.MustParseAddrPort("127.0.0.1:51234")

func TestResolveFake(t *testing.T) {
	p := newFakeProc(t)
	p.add(500, "/usr/bin/curl", "curl\x00-H\x00Authorization: Bearer abcdef\x00http://x/\x00extra\x00", 400, 9000)
	p.add(400, "/usr/bin/bash", "bash\x00", 300, 8000)
	p.add(300, "/usr/sbin/sshd", "sshd: alice\x00", 1, 7000)
	passwd, group := writeUserDB(t)
	r := &Resolver{ProcRoot: p.root, PasswdFile: passwd, GroupFile: group, NameService: noNameService}

	c, err := r.Resolve(identity.Record{PID: 500, UID: 1000, GID: 1000, StartTime: 9000, Comm: "curl"}, client)
	if err != nil {
		t.Fatal(err)
	}
	want := &Claims{
		UserID: 1000, UserName: "alice", GroupID: 1000, UserGroups: []string{"alice", "adm", "sudo", "docker"},
		ProcessID: 500, ProcessName: "curl", ProcessFullPath: "/usr/bin/curl",
		ProcessCmdLine: "curl -H [REDACTED]",
		ClientIP:       "127.0.0.1", ClientPort: 51234,
		Ancestry: []Process{
			{PID: 400, Exe: "/usr/bin/bash", CmdLine: "bash"},
			{PID: 300, Exe: "/usr/sbin/sshd", CmdLine: "sshd: alice"},
		},
	}
	assertClaims(t, c, want)

	t.Run("root is elevated", func(t *testing.T) {
		c, err := r.Resolve(identity.Record{PID: 500, UID: 0, StartTime: 9000}, client)
		if err != nil {
			t.Fatal(err)
		}
		if !c.RunAsElevated || c.UserName != "root" || len(c.UserGroups) != 1 || c.UserGroups[0] != "root" {
			t.Errorf("got %+v", c)
		}
	})
	t.Run("unknown uid", func(t *testing.T) {
		c, err := r.Resolve(identity.Record{PID: 500, UID: 4242, StartTime: 9000}, client)
		if err != nil {
			t.Fatal(err)
		}
		if c.UserName != Undefined || c.UserGroups == nil || len(c.UserGroups) != 0 || c.RunAsElevated {
			t.Errorf("got %+v", c)
		}
	})
	t.Run("executable replaced since connect", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "prog")
		must(t, os.WriteFile(bin, []byte("x"), 0o755))
		fi, err := os.Stat(bin)
		must(t, err)
		ino := fi.Sys().(*syscall.Stat_t).Ino
		var stx unix.Statx_t
		must(t, unix.Statx(unix.AT_FDCWD, bin, 0, unix.STATX_MNT_ID, &stx))
		mnt := stx.Mnt_id
		p.add(600, bin, "prog\x00--flag\x00", 400, 9100)
		for _, tc := range []struct {
			ino, mnt uint64
			known    bool
			wantPath string
		}{
			{ino + 1, mnt, true, ""},
			{ino, mnt + 1, true, ""}, // the same inode number on another mount (FUSE) is another file
			{ino, 0, true, ""},       // ... or from a memfd (mount id 0)
			{ino, mnt, true, bin},
			{ino, 0, false, bin}, // mount unknown: the inode number alone
			{0, 0, false, bin},
		} {
			c, err := r.Resolve(identity.Record{PID: 600, UID: 1000, StartTime: 9100, ExecID: 2, ExeIno: tc.ino, ExeMnt: tc.mnt,
				ExeMntKnown: tc.known}, client)
			if err != nil {
				t.Fatal(err)
			}
			want := Undefined
			if tc.wantPath != "" {
				want = "prog --flag"
			}
			if c.ProcessFullPath != tc.wantPath || c.ProcessCmdLine != want || (tc.wantPath == "") != (c.ProcessName == "") {
				t.Errorf("recorded inode %d mount %d (file's %d, %d): %q %q %q", tc.ino, tc.mnt, ino, mnt, c.ProcessFullPath, c.ProcessName, c.ProcessCmdLine)
			}
		}
		// An executable that cannot be examined any more (the process
		// exited between the reads) is not taken for the recorded one.
		p.add(601, filepath.Join(t.TempDir(), "gone"), "prog\x00", 400, 9101)
		c, err := r.Resolve(identity.Record{PID: 601, UID: 1000, StartTime: 9101, ExecID: 2, ExeIno: ino}, client)
		if err != nil || c.ProcessFullPath != "" || c.ProcessName != "" {
			t.Errorf("unexaminable executable: %q %q, %v", c.ProcessFullPath, c.ProcessName, err)
		}
	})
	t.Run("start time mismatch", func(t *testing.T) {
		_, err := r.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 8999}, client)
		if !errors.Is(err, ErrPIDReused) {
			t.Fatalf("err = %v, want ErrPIDReused", err)
		}
	})
	t.Run("exited process", func(t *testing.T) {
		c, err := r.Resolve(identity.Record{PID: 777, UID: 1001, StartTime: 5, Comm: "wget"}, client)
		if err != nil {
			t.Fatal(err)
		}
		assertClaims(t, c, &Claims{UserID: 1001, UserName: "bob", UserGroups: []string{"bob", "adm", "docker"},
			ProcessID: 777, ProcessName: "", ProcessCmdLine: Undefined, ClientIP: "127.0.0.1", ClientPort: 51234})
	})
	t.Run("no start time is not verified", func(t *testing.T) {
		c, err := r.Resolve(identity.Record{PID: 500, UID: 1000}, client)
		if err != nil || c.ProcessFullPath != "/usr/bin/curl" {
			t.Fatalf("got %+v, %v", c, err)
		}
	})
	t.Run("ancestry depth", func(t *testing.T) {
		r1 := &Resolver{ProcRoot: p.root, PasswdFile: passwd, GroupFile: group, NameService: noNameService, AncestryDepth: 1}
		c, _ := r1.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000}, client)
		if len(c.Ancestry) != 1 {
			t.Errorf("ancestry %+v, want 1 level", c.Ancestry)
		}
		rn := &Resolver{ProcRoot: p.root, PasswdFile: passwd, GroupFile: group, NameService: noNameService, AncestryDepth: -1}
		c, _ = rn.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000}, client)
		if len(c.Ancestry) != 0 {
			t.Errorf("ancestry %+v, want none", c.Ancestry)
		}
	})
}

func TestResolveAncestryStopsAtReusedParent(t *testing.T) {
	p := newFakeProc(t)
	p.add(500, "/usr/bin/curl", "curl\x00", 400, 9000)
	// pid 400 now belongs to a process started after its "child".
	p.add(400, "/usr/bin/evil", "evil\x00", 300, 9500)
	r := &Resolver{ProcRoot: p.root}
	c, err := r.Resolve(identity.Record{PID: 500, UID: 0, StartTime: 9000}, client)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Ancestry) != 0 {
		t.Errorf("ancestry = %+v, want none", c.Ancestry)
	}
}

func TestResolveAncestryCapsAtFourLevels(t *testing.T) {
	p := newFakeProc(t)
	p.add(10, "/bin/c", "c\x00", 9, 100)
	for pid := 9; pid >= 2; pid-- {
		p.add(pid, fmt.Sprintf("/bin/p%d", pid), "p\x00", uint32(pid-1), uint64(pid))
	}
	r := &Resolver{ProcRoot: p.root}
	c, err := r.Resolve(identity.Record{PID: 10, UID: 0, StartTime: 100}, client)
	if err != nil {
		t.Fatal(err)
	}
	var pids []uint32
	for _, a := range c.Ancestry {
		pids = append(pids, a.PID)
	}
	if fmt.Sprint(pids) != "[9 8 7 6]" {
		t.Errorf("ancestry pids %v, want [9 8 7 6]", pids)
	}
}

func assertClaims(t *testing.T, got, want *Claims) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("claims\n got %s\nwant %s", g, w)
	}
}

func TestUserCacheExpires(t *testing.T) {
	passwd, group := writeUserDB(t)
	r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: passwd, GroupFile: group, NameService: noNameService, UserCacheTTL: time.Hour}
	c, _ := r.Resolve(identity.Record{PID: 1, UID: 1002}, client)
	if c.UserName != Undefined {
		t.Fatalf("user %q before creation", c.UserName)
	}
	f, err := os.OpenFile(passwd, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteString("carol:x:1002:1002::/home/carol:/bin/sh\n")
	must(t, err)
	must(t, f.Close())
	c, _ = r.Resolve(identity.Record{PID: 1, UID: 1002}, client)
	if c.UserName != Undefined {
		t.Errorf("cached entry not reused: %q", c.UserName)
	}
}

// The bubble's clock moves the cache past its TTL.
func TestUserCacheRefreshesAfterTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		passwd, group := writeUserDB(t)
		r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: passwd, GroupFile: group, NameService: noNameService, UserCacheTTL: time.Minute}
		if c, _ := r.Resolve(identity.Record{PID: 1, UID: 1002}, client); c.UserName != Undefined {
			t.Fatalf("user %q before creation", c.UserName)
		}
		must(t, os.WriteFile(passwd, []byte("carol:x:1002:1002::/home/carol:/bin/sh\n"), 0o644))
		time.Sleep(time.Minute + time.Nanosecond)
		if c, _ := r.Resolve(identity.Record{PID: 1, UID: 1002}, client); c.UserName != "carol" {
			t.Errorf("expired entry not refreshed: %q", c.UserName)
		}
	})
}

// startChild runs sh with a secret in its arguments and returns it with
// its start time read from the real /proc.
func startChild(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 30; :", "pwd=hunter2")
	must(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var r Resolver
	// Wait for the exec to complete (cmdline switches from the Go binary).
	// comm changes early in exec, the new command line a little later;
	// wait for both.
	var start uint64
	testsupport.WaitFor(t, "the child's exec of sh", func() bool {
		st, err := r.readStat(uint32(cmd.Process.Pid))
		cl, _ := r.readCmdLine(uint32(cmd.Process.Pid))
		start = st.StartTime
		return err == nil && st.Comm == "sh" && strings.HasPrefix(cl, "sh ")
	})
	return cmd, start
}

func TestResolveRealProc(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	cmd, start := startChild(t)
	pid := uint32(cmd.Process.Pid)
	var r Resolver
	rec := identity.Record{PID: pid, UID: uint32(os.Getuid()), StartTime: start, Comm: "sh"}
	c, err := r.Resolve(rec, client)
	if err != nil {
		t.Fatal(err)
	}
	shPath, err := exec.LookPath("sh")
	must(t, err)
	shReal, err := filepath.EvalSymlinks(shPath)
	must(t, err)
	if c.ProcessFullPath != shReal || c.ProcessName != filepath.Base(shReal) {
		t.Errorf("process %q (%q), want %q", c.ProcessFullPath, c.ProcessName, shReal)
	}
	if want := "sh -c sleep 30; : [REDACTED]"; c.ProcessCmdLine != want {
		t.Errorf("cmdline %q, want %q", c.ProcessCmdLine, want)
	}
	self, err := os.Executable()
	must(t, err)
	if len(c.Ancestry) == 0 || c.Ancestry[0].PID != uint32(os.Getpid()) || c.Ancestry[0].Exe != self {
		t.Errorf("ancestry %+v, want parent %d %s first", c.Ancestry, os.Getpid(), self)
	}
	if c.RunAsElevated != (os.Getuid() == 0) {
		t.Errorf("runAsElevated %v for uid %d", c.RunAsElevated, os.Getuid())
	}
	if c.OtherUserNS {
		t.Error("a child in the test's user namespace counted as in another")
	}

	rec.StartTime = start + 1
	if _, err := r.Resolve(rec, client); !errors.Is(err, ErrPIDReused) {
		t.Errorf("mismatched start time: err = %v, want ErrPIDReused", err)
	}

	// After the process is gone: kernel data kept, /proc data dropped.
	cmd.Process.Kill()
	cmd.Wait()
	rec.StartTime = start
	c, err = r.Resolve(rec, client)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProcessFullPath != "" || c.ProcessName != "" || c.ProcessCmdLine != Undefined || c.ProcessID != pid || c.OtherUserNS {
		t.Errorf("exited process claims %+v", c)
	}
}

func BenchmarkResolveRealProc(b *testing.B) {
	for _, depth := range []int{-1, 4} {
		b.Run(fmt.Sprintf("ancestry=%d", max(depth, 0)), func(b *testing.B) {
			r := Resolver{AncestryDepth: depth}
			self := uint32(os.Getpid())
			st, err := r.readStat(self)
			if err != nil {
				b.Skip(err)
			}
			rec := identity.Record{PID: self, UID: uint32(os.Getuid()), StartTime: st.StartTime}
			for b.Loop() {
				if _, err := r.Resolve(rec, client); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// noNameService is a name service that knows nobody, for tests whose user
// databases are the files alone.
func noNameService(context.Context, string, ...string) ([]byte, error) {
	return nil, errors.New("exit status 2")
}

// A uid the files do not name is asked of the name service (a directory
// user: sssd, LDAP, Entra ID login): its name and group names come from
// getent and id, and an answer that is not that uid's entry is ignored.
func TestUserFromNameService(t *testing.T) {
	passwd, group := writeUserDB(t)
	var asked []string
	nss := func(_ context.Context, name string, args ...string) ([]byte, error) {
		asked = append(asked, name+" "+strings.Join(args, " "))
		switch name + " " + strings.Join(args, " ") {
		case "getent passwd 1500000":
			return []byte("dana@contoso.com:x:1500000:1500000::/home/dana@contoso.com:/bin/bash\n"), nil
		case "id -G -- dana@contoso.com":
			return []byte("1500000 1500100 1500200\n"), nil
		case "getent group 1500000 1500100 1500200":
			// Directory group names hold spaces; 1500200 has no name.
			return []byte("dana@contoso.com:*:1500000:\naad admins@contoso.com:*:1500100:dana@contoso.com\n"), errors.New("exit status 2")
		case "getent passwd 1500001":
			return []byte("eve:x:1500009:1500009::/home/eve:/bin/sh\n"), nil // another uid's entry
		}
		return nil, errors.New("exit status 2")
	}
	r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: passwd, GroupFile: group, NameService: nss}
	c, _ := r.Resolve(identity.Record{PID: 1, UID: 1500000}, client)
	if c.UserName != "dana@contoso.com" || !slices.Equal(c.UserGroups, []string{"dana@contoso.com", "aad admins@contoso.com"}) {
		t.Errorf("directory user: %q %q", c.UserName, c.UserGroups)
	}
	for _, uid := range []uint32{1500001, 1500002} {
		if c, _ := r.Resolve(identity.Record{PID: 1, UID: uid}, client); c.UserName != Undefined || len(c.UserGroups) != 0 {
			t.Errorf("uid %d: %q %q, want undefined", uid, c.UserName, c.UserGroups)
		}
	}
	if c, _ := r.Resolve(identity.Record{PID: 1, UID: 1000}, client); c.UserName != "alice" {
		t.Errorf("file user: %q", c.UserName)
	}
	if slices.ContainsFunc(asked, func(q string) bool { return strings.HasSuffix(q, " 1000") }) {
		t.Errorf("a user in the files was asked of the name service: %q", asked)
	}
}

// The real name service (getent and id, with the machine's nsswitch.conf)
// answers for a uid the given files lack: root, which every system names.
func TestUserFromRealNameService(t *testing.T) {
	if _, err := exec.LookPath("getent"); err != nil {
		t.Skip("getent not installed")
	}
	empty := filepath.Join(t.TempDir(), "passwd")
	must(t, os.WriteFile(empty, nil, 0o644))
	r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: empty, GroupFile: empty}
	c, _ := r.Resolve(identity.Record{PID: 1, UID: 0}, client)
	if c.UserName != "root" || !slices.Contains(c.UserGroups, "root") {
		t.Errorf("root through the name service: %q %q", c.UserName, c.UserGroups)
	}
}

// Concurrent connections of one new uid ask the name service once.
func TestNameServiceOncePerUID(t *testing.T) {
	passwd, group := writeUserDB(t)
	var calls atomic.Int64
	release := make(chan struct{})
	nss := func(ctx context.Context, name string, args ...string) ([]byte, error) {
		if name == "getent" && args[0] == "passwd" {
			calls.Add(1)
			<-release
			return []byte("carl:x:1600000:1600000::/home/carl:/bin/sh\n"), nil
		}
		return nil, errors.New("exit status 2")
	}
	r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: passwd, GroupFile: group, NameService: nss}
	var wg sync.WaitGroup
	names := make([]string, 8)
	for i := range names {
		wg.Go(func() {
			c, _ := r.Resolve(identity.Record{PID: 1, UID: 1600000}, client)
			names[i] = c.UserName
		})
	}
	testsupport.WaitFor(t, "the first lookup", func() bool { return calls.Load() == 1 })
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d name-service lookups for one uid, want 1", n)
	}
	for _, n := range names {
		if n != "carl" {
			t.Errorf("user %q", n)
		}
	}

}

// A lookup the name service did not answer in time is "undefined" and not
// cached, so the next connection asks again (the bubble's clock runs out
// the timeout).
func TestNameServiceTimeoutNotCached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		passwd, group := writeUserDB(t)
		var calls atomic.Int64
		r := &Resolver{ProcRoot: t.TempDir(), PasswdFile: passwd, GroupFile: group,
			NameService: func(ctx context.Context, name string, args ...string) ([]byte, error) {
				calls.Add(1)
				<-ctx.Done() // the name service hangs
				return nil, ctx.Err()
			}}
		for range 2 {
			if c, _ := r.Resolve(identity.Record{PID: 1, UID: 1600001}, client); c.UserName != Undefined {
				t.Errorf("hung name service: %q", c.UserName)
			}
		}
		if n := calls.Load(); n != 2 {
			t.Errorf("a timed-out lookup was cached: %d lookups for two connections, want 2", n)
		}
	})
}

// A caller in another user namespace than the agent's keeps its user,
// command line and ancestry but gets no executable or process name: in
// its own user namespace it chooses what its executable is (a bind mount
// over an allowed path, PR_SET_MM_MAP). Its image is cached so, and a
// caller in the agent's namespace keeps its executable.
func TestResolveOtherUserNSFake(t *testing.T) {
	p := newFakeProc(t)
	p.add(500, "/usr/bin/curl", "curl\x00http://x/\x00", 1, 9000)
	p.add(501, "/usr/bin/curl", "curl\x00http://y/\x00", 1, 9100)
	must(t, os.MkdirAll(filepath.Join(p.root, "self", "ns"), 0o755))
	for _, pid := range []string{"500", "501"} {
		must(t, os.MkdirAll(filepath.Join(p.root, pid, "ns"), 0o755))
	}
	agentNS := filepath.Join(p.root, "self", "ns", "user")
	must(t, os.WriteFile(agentNS, nil, 0o644))
	must(t, os.Link(agentNS, filepath.Join(p.root, "500", "ns", "user")))
	must(t, os.WriteFile(filepath.Join(p.root, "501", "ns", "user"), nil, 0o644))
	r := &Resolver{ProcRoot: p.root}

	for range 2 { // the second time from the image cache
		same, err := r.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000, ExecID: 1}, client)
		must(t, err)
		if same.ProcessFullPath != "/usr/bin/curl" || same.ProcessName != "curl" || same.OtherUserNS {
			t.Errorf("caller in the agent's user namespace: %+v, want its executable", same)
		}
		other, err := r.Resolve(identity.Record{PID: 501, UID: 1000, StartTime: 9100, ExecID: 1}, client)
		must(t, err)
		if other.ProcessFullPath != "" || other.ProcessName != "" || !other.OtherUserNS ||
			other.ProcessCmdLine != "curl http://y/" || other.UserID != 1000 {
			t.Errorf("caller in another user namespace: %+v, want no executable, otherUserns, its command line", other)
		}
	}
	if n := r.images.len(); n != 2 {
		t.Errorf("%d images cached, want 2", n)
	}

	// While the agent's own namespace cannot be read, no caller has an
	// executable; it is read again later.
	selfNS := filepath.Join(p.root, "self", "ns")
	must(t, os.Rename(selfNS, selfNS+".away"))
	must(t, os.WriteFile(selfNS, nil, 0o644)) // ENOTDIR
	r2 := &Resolver{ProcRoot: p.root}
	if c, err := r2.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000}, client); err != nil || c.ProcessFullPath != "" || c.OtherUserNS {
		t.Errorf("agent's namespace unreadable: %+v, %v; want no executable, no otherUserns", c, err)
	}
	must(t, os.Remove(selfNS))
	must(t, os.Rename(selfNS+".away", selfNS))
	if c, err := r2.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000}, client); err != nil || c.ProcessFullPath != "/usr/bin/curl" {
		t.Errorf("agent's namespace readable again: %+v, %v; want the executable", c, err)
	}

	// A caller whose namespace cannot be read has no executable, and is
	// not said to be in another namespace.
	must(t, os.Remove(filepath.Join(p.root, "500", "ns", "user")))
	c, err := r.Resolve(identity.Record{PID: 500, UID: 1000, StartTime: 9000}, client)
	must(t, err)
	if c.ProcessFullPath != "" || c.OtherUserNS {
		t.Errorf("unreadable user namespace: %+v, want no executable, no otherUserns", c)
	}
}

// The same with real processes: a child in a new user namespace (as
// `unshare -U` makes one) has no executable in its claims.
func TestResolveOtherUserNSReal(t *testing.T) {
	if _, err := os.Stat("/proc/self/ns/user"); err != nil {
		testenv.SkipOrFail(t, "no user namespaces: %v", err)
	}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	sleep, err = filepath.EvalSymlinks(sleep)
	must(t, err)
	if err := cmd.Start(); err != nil {
		testenv.SkipOrFail(t, "cannot make a user namespace here: %v", err)
	}
	var r Resolver
	pid, start := waitExec(t, cmd, sleep)
	c, err := r.Resolve(identity.Record{PID: pid, UID: uint32(os.Getuid()), StartTime: start}, client)
	must(t, err)
	if c.ProcessFullPath != "" || c.ProcessName != "" || !c.OtherUserNS || !strings.HasPrefix(c.ProcessCmdLine, "sleep") {
		t.Errorf("caller in a new user namespace: %+v, want no executable, otherUserns", c)
	}
}

// A process can execute a file through a descriptor from a process in
// another mount namespace, where a bind mount put another binary at a
// path: /proc then shows that path, which in the caller's own root names
// another file. It gets no executable, also where openat2 is refused (a
// seccomp filter, as systemd-nspawn's), and a process running its own
// file keeps it.
func TestResolveExeFromAnotherMountNS(t *testing.T) {
	t.Run("openat2", testResolveExeFromAnotherMountNS)
	t.Run("without openat2", func(t *testing.T) {
		real := openat2
		openat2 = func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS }
		t.Cleanup(func() { openat2 = real })
		testResolveExeFromAnotherMountNS(t)
	})
}

func testResolveExeFromAnotherMountNS(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.SkipOrFail(t, "needs root (a mount namespace)")
	}
	dir := t.TempDir()
	allowed := filepath.Join(dir, "allowed")
	must(t, os.WriteFile(allowed, []byte("#!/bin/sh\n"), 0o755))
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	// The helper binds sleep over the path in a mount namespace of its own
	// and keeps it open as descriptor 3.
	helper := exec.Command("unshare", "-m", "sh", "-c", `mount --bind "$1" "$0" && exec sleep 300 3<"$0"`, allowed, sleep)
	must(t, helper.Start())
	t.Cleanup(func() { helper.Process.Kill(); helper.Wait() })
	fd3 := fmt.Sprintf("/proc/%d/fd/3", helper.Process.Pid)
	testsupport.WaitFor(t, "the helper's descriptor", func() bool {
		target, err := os.Readlink(fd3)
		return err == nil && target == allowed
	})
	caller := exec.Command(fd3, "300")
	must(t, caller.Start())
	var r Resolver
	pid, start := waitExec(t, caller, allowed)
	c, err := r.Resolve(identity.Record{PID: pid, UID: 0, StartTime: start}, client)
	must(t, err)
	if c.ProcessFullPath != "" || c.ProcessName != "" || c.OtherUserNS {
		t.Errorf("caller running another namespace's %s: %+v, want no executable", allowed, c)
	}
	// The helper runs sleep from its own root: its executable counts.
	real, err := filepath.EvalSymlinks(sleep)
	must(t, err)
	pid, start = waitExec(t, helper, real)
	c, err = r.Resolve(identity.Record{PID: pid, UID: 0, StartTime: start}, client)
	must(t, err)
	if c.ProcessFullPath != real {
		t.Errorf("helper running its own %s: %+v, want its executable", real, c)
	}

	// A process that enters a mount namespace of its own after its execve
	// runs its file from the old mount, while its path resolves through the
	// new namespace's copy (another mount id): it keeps its executable.
	nr := map[string]int{"amd64": 272, "arm64": 97}[runtime.GOARCH] // unshare(2)
	perl, err := exec.LookPath("perl")
	if err != nil || nr == 0 {
		testenv.SkipOrFail(t, "no perl or unshare(2) number here (%v, %s): the late unshare is not tried", err, runtime.GOARCH)
	}
	perl, err = filepath.EvalSymlinks(perl)
	must(t, err)
	late := exec.Command(perl, "-e", fmt.Sprintf("$| = 1; syscall(%d, 0x20000) == 0 or die $!; print qq(ok\n); sleep 300", nr))
	out, err := late.StdoutPipe()
	must(t, err)
	must(t, late.Start())
	pid, start = waitExec(t, late, perl)
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("perl's unshare: %q %v", line, err)
	}
	c, err = r.Resolve(identity.Record{PID: pid, UID: 0, StartTime: start}, client)
	must(t, err)
	if c.ProcessFullPath != perl {
		t.Errorf("process in a mount namespace entered after its execve: %+v, want %s", c, perl)
	}
}

// The file a process runs, examined once after its path was read, must
// be the one the kernel recorded at connect: otherwise an execve came
// between (and the path and the file might be two programs'), and the
// caller has no executable or command line.
func TestResolveChecksRecordedExecutable(t *testing.T) {
	cmd, start := startChild(t)
	pid := uint32(cmd.Process.Pid)
	st, err := statExecutable(fmt.Sprintf("/proc/%d/exe", pid))
	must(t, err)
	rec := identity.Record{PID: pid, StartTime: start, ExeIno: st.Ino, ExeMnt: st.Mnt_id, ExeMntKnown: st.Mask&unix.STATX_MNT_ID != 0}
	var r Resolver
	c, err := r.Resolve(rec, client)
	must(t, err)
	if c.ProcessFullPath == "" || c.ProcessCmdLine == Undefined {
		t.Fatalf("the recorded executable running: %+v, want its path and command line", c)
	}
	other := rec
	other.ExeIno++
	if c, err := r.Resolve(other, client); err != nil || c.ProcessFullPath != "" || c.ProcessCmdLine != Undefined {
		t.Errorf("another file recorded (inode): %+v, %v; want neither path nor command line", c, err)
	}
	other = rec
	other.ExeMnt++
	if c, err := r.Resolve(other, client); rec.ExeMntKnown && (err != nil || c.ProcessFullPath != "") {
		t.Errorf("another file recorded (mount): %+v, %v; want no path", c, err)
	}
}

// waitExec waits until the started cmd's /proc shows exe as its
// executable, and returns its pid and start time; cmd is killed when the
// test ends.
func waitExec(t *testing.T, cmd *exec.Cmd, exe string) (pid uint32, start uint64) {
	t.Helper()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var r Resolver
	pid = uint32(cmd.Process.Pid)
	testsupport.WaitFor(t, "the exec of "+exe, func() bool {
		st, err := r.readStat(pid)
		got, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		start = st.StartTime
		return err == nil && got == exe
	})
	return pid, start
}
