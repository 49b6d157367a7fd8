package redact

import (
	"strings"
	"testing"
)

func TestStringUpstreamExamples(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"sql pwd", "server=...database.windows.net;database=...;pwd=<dummyString>;user=...;",
			"server=...database.windows.net;database=...;[REDACTED];user=...;"},
		{"sql password", "server=...database.windows.net;database=...;password=<dummyString>;user=...;",
			"server=...database.windows.net;database=...;[REDACTED];user=...;"},
		{"short pwd", "pwd=secret123;", "[REDACTED];"},
		{"sas sig mid", "https://abc.core.windows.net/blob?sig=<dummyKey>&otherparam=value",
			"https://abc.core.windows.net/blob?[REDACTED]&otherparam=value"},
		{"sas sig end", "https://example.com/api?sig=<dummyKey>", "https://example.com/api?[REDACTED]"},
		{"account key", "Endpoint=...table.core.windows.net;AccountKey=<dummyString>;AccountName=...",
			"Endpoint=...table.core.windows.net;[REDACTED];AccountName=..."},
		{"primary key", "Endpoint=...table.core.windows.net;PrimaryKey=<dummyString>;AccountName=...",
			"Endpoint=...table.core.windows.net;[REDACTED];AccountName=..."},
		{"secondary key", "Endpoint=...table.core.windows.net;SecondaryKey=<dummyString>;AccountName=...",
			"Endpoint=...table.core.windows.net;[REDACTED];AccountName=..."},
		{"pem", "-----BEGIN RSA PRIVATE KEY-----\nMI...\n-----END RSA PRIVATE KEY-----", "-----[REDACTED]-----"},
		{"devops pat", "Here is a token:abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst\n" +
			"And another one: azuredevops=ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST",
			"Here is a [REDACTED]\nAnd another one: [REDACTED]"},
		{"redis", "Here is one: abcdefghijklmnopqrstuvwxyzABCDEFGAzCaG12345=\n" +
			"Another one: 1234567890abcdefghijklmnopqrstuvwxyzABC12345AzCaabcdeQ",
			"Here is one: [REDACTED]\nAnother one: [REDACTED]"},
		{"jwt", "EntraAccessToken:eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJtest", "EntraAccessToken:[REDACTED]test"},
		{"authorization", "Authorization: Bearer abcdef123456\nauthorization = basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\n" +
			"Authorization value: oauth oauth_token=xyz\nauthorization: aws4-hmac-sha256",
			"[REDACTED]\n[REDACTED]\n[REDACTED]\n[REDACTED]"},
		// Beyond upstream's own examples.
		// Upstream's keyword filter lets a URL password through unless some
		// other keyword is present; here "://" plus "@" also passes it.
		{"url password", "git clone https://alice:hunter22@example.com/repo.git",
			"git clone [REDACTED]"},
		{"url without password", "curl https://example.com/a@b", "curl https://example.com/a@b"},
		{"storage key", "--account-key abcdefghijklmnopqrstuvwxyzABCDEFGHIJ01234/+=",
			"--account-[REDACTED]"},
		{"pem without end", "cat -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE", "cat -----[REDACTED]"},
		{"password flag", "mysql --password=s3cr3t -u root", "mysql --[REDACTED]"},
		// Rust's \s is Unicode: a no-break space or a vertical tab after
		// "Authorization:" does not hide the header.
		{"authorization nbsp", "Authorization:\u00a0Bearer abcdef123456", "[REDACTED]"},
		{"authorization vt", "Authorization:\vBearer abcdef123456", "[REDACTED]"},
		{"password nbsp", "login password:\u00a0hunter2secret rest", "login [REDACTED]"},
		{"password em space", "login password:\u2003hunter2secret", "login [REDACTED]"},
		{"azurecr nbsp", "azurecr.io token\u00a0abcdefsecret", "[REDACTED]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := String(tc.in); got != tc.want {
				t.Errorf("String(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestGatesDoNotChangeResults checks that skipping patterns by their cheap
// necessary conditions gives the same text as running every pattern.
func TestGatesDoNotChangeResults(t *testing.T) {
	inputs := []string{
		"client_secret=abcdefgh12345678 --x",
		"api-key: 0123456789abcdefXYZ",
		"application_secret \"data:text/plain,hello\"",
		"refresh_token=aaaaaaaaaaaaaaaaaaaa",
		"twilioauthSid=AC0123456789",
		"aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYab ",
		"shared access " + strings.Repeat("A", 86) + "=",
		"docker login myreg.azurecr.io -u user -p Passw0rd!",
		"pswd: hunter2",
		"vsts " + strings.Repeat("b", 52),
		"pat " + strings.Repeat("C", 52),
		"curl https://u:p4ss@host/x",
		"amqp://guest:guest@localhost:5672/",
		"Authorization: Digest abc",
		"x-ms-authorization bearer qqq",
		"-----BEGIN PRIVATE KEY-----\nabc",
		"credential " + strings.Repeat("z", 43) + "= tail",
		"key " + strings.Repeat("z", 44) + "=",
		"sig=abc&token=def",
		"eyJhbGciOi.eyJzdWIi.sig",
	}
	for _, in := range inputs {
		if got, want := redact(in, true), redact(in, false); got != want {
			t.Errorf("gated %q = %q, ungated %q", in, got, want)
		}
	}
}

func TestStringLeavesPlainTextUnchanged(t *testing.T) {
	for _, in := range []string{
		"",
		"This is a normal log message without any secrets",
		"/usr/bin/python3 -u bin/WALinuxAgent-2.9.1.1-py3.8.egg -run-exthandlers",
		"curl -s -H Metadata:true http://169.254.169.254/metadata/instance?api-version=2021-02-01",
		// Passes the keyword filter ("key") but matches no pattern.
		"ssh-keygen -t ed25519 -f /tmp/id",
		"sleep 30",
	} {
		if got := String(in); got != in {
			t.Errorf("String(%q) = %q, want unchanged", in, got)
		}
	}
}

func TestMightContainSecret(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"PWD=x", true},
		{"Authorization: x", true},
		{"my-TOKEN", true},
		{"azca", false}, // AzCa is case-sensitive
		{"AzCa", true},
		{"private key", false}, // PRIVATE KEY is case-sensitive... but "key" is not
		{"eyj", false},
		{"eyJ", true},
		{"hello world", false},
	}
	// "private key" contains the folded keyword "key".
	tests[5].want = true
	for _, tc := range tests {
		if got := MightContainSecret(tc.in); got != tc.want {
			t.Errorf("MightContainSecret(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestStringConcurrent(t *testing.T) {
	done := make(chan string, 8)
	for i := 0; i < 8; i++ {
		go func() { done <- String("request=1;password=secret;") }()
	}
	for i := 0; i < 8; i++ {
		if got := <-done; got != "request=1;[REDACTED];" {
			t.Errorf("got %q", got)
		}
	}
}

func BenchmarkStringNoKeyword(b *testing.B) {
	s := "/usr/bin/python3 -u bin/WALinuxAgent-2.9.1.1-py3.8.egg -run-exthandlers"
	for b.Loop() {
		String(s)
	}
}

func BenchmarkStringKeywordNoSecret(b *testing.B) {
	s := "/usr/bin/az keyvault secret show --name db --vault-name prod"
	for b.Loop() {
		String(s)
	}
}

func BenchmarkStringLongKeyword(b *testing.B) {
	s := "token " + strings.Repeat("x", 64<<10)
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		String(s)
	}
}

// unicodeSpace widens \s inside and outside classes and leaves every
// other escape, an escaped backslash included, alone.
func TestUnicodeSpace(t *testing.T) {
	for in, want := range map[string]string{
		`a\sb`:     `a[` + spaceClass + `]b`,
		`[^\s"']`:  `[^` + spaceClass + `"']`,
		`[\s\S]`:   `[` + spaceClass + `\S]`,
		`[]\s]`:    `[]` + spaceClass + `]`,
		`x\\s`:     `x\\s`,
		`[\]\s]\s`: `[\]` + spaceClass + `][` + spaceClass + `]`,
		`\d\w`:     `\d\w`,
	} {
		if got := unicodeSpace(in); got != want {
			t.Errorf("unicodeSpace(%s) = %s, want %s", in, got, want)
		}
	}
}
