package mountinfo

import (
	"os"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/fs/cgroup":       "/sys/fs/cgroup",
		`/mnt/a\040b`:          "/mnt/a b",
		`/mnt/tab\011x\134y`:   "/mnt/tab\tx\\y",
		`/mnt/short\04`:        `/mnt/short\04`,
		`/mnt/not-octal\999xy`: `/mnt/not-octal\999xy`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFind(t *testing.T) {
	p, err := Find("proc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p + "/self"); err != nil {
		t.Fatalf("proc mount %q has no self: %v", p, err)
	}
	if _, err := Find("no-such-fs-type"); err == nil {
		t.Fatal("Find of an absent file system type succeeded")
	}
}
