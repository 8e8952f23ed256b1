package auth

import (
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "join.token") // parent missing too

	tok, created, err := LoadOrCreateToken(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreateToken = %q, %v, %v", tok, created, err)
	}
	if len(tok) != 64 || strings.Trim(tok, "0123456789abcdef") != "" {
		t.Fatalf("token %q is not 32 hex-encoded bytes", tok)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != tok+"\n" {
		t.Fatalf("file holds %q, %v; want the token and a newline", b, err)
	}
	for p, want := range map[string]fs.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
	}

	again, created, err := LoadOrCreateToken(path)
	if err != nil || created || again != tok {
		t.Fatalf("reload = %q, %v, %v; want %q, false, nil", again, created, err, tok)
	}
	read, err := ReadToken(path)
	if err != nil || read != tok {
		t.Fatalf("ReadToken = %q, %v; want %q", read, err, tok)
	}

	other, _, err := LoadOrCreateToken(filepath.Join(dir, "other.token"))
	if err != nil || other == tok {
		t.Fatalf("a second token file: %q, %v (same token as the first?)", other, err)
	}
}

func TestLoadOrCreateTokenRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "join.token")
	const n = 8
	toks := make([]string, n)
	creators := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			toks[i], creators[i], err = LoadOrCreateToken(path)
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	created := 0
	for i := range n {
		if toks[i] != toks[0] {
			t.Fatalf("racing creators got different tokens: %q", toks)
		}
		if creators[i] {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d callers report creating the file, want 1", created)
	}
}

func TestReadTokenFiles(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		contents string // "" with missing: no file
		missing  bool
		want     string
		errPart  string
	}{
		{name: "plain", contents: "0123456789abcdef", want: "0123456789abcdef"},
		{name: "whitespace", contents: "  \t0123456789abcdef0123\r\n\n", want: "0123456789abcdef0123"},
		{name: "user chosen", contents: "correct-horse-battery-staple\n", want: "correct-horse-battery-staple"},
		{name: "empty", contents: "", errPart: ": empty"},
		{name: "blank", contents: " \n\t\n", errPart: ": empty"},
		{name: "short", contents: "0123456789abcde\n", errPart: "too short"},
		{name: "two words", contents: "0123456789 abcdef0123\n", errPart: "one word"},
		{name: "two lines", contents: "0123456789abcdef\n0123456789abcdef\n", errPart: "one word"},
		{name: "control", contents: "0123456789abcdef\x00", errPart: "one word"},
		{name: "non-ascii", contents: "0123456789abcdéf", errPart: "one word"},
		{name: "huge", contents: strings.Repeat("a", 5000), errPart: "too large"},
		{name: "missing", missing: true, errPart: "not found (copy it from the coordinator)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".token")
			if !tt.missing {
				if err := os.WriteFile(path, []byte(tt.contents), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadToken(path)
			checkTokenResult(t, "ReadToken", path, got, err, tt.want, tt.errPart)
			if tt.missing {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("missing file: %v does not wrap fs.ErrNotExist", err)
				}
				if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("ReadToken created %s", path)
				}
				return
			}
			// LoadOrCreateToken reads by the same rules and never replaces
			// a file it refuses.
			got, created, err := LoadOrCreateToken(path)
			checkTokenResult(t, "LoadOrCreateToken", path, got, err, tt.want, tt.errPart)
			if created {
				t.Errorf("LoadOrCreateToken created over an existing file")
			}
			if b, _ := os.ReadFile(path); string(b) != tt.contents {
				t.Errorf("file changed to %q", b)
			}
		})
	}
}

func checkTokenResult(t *testing.T, fn, path, got string, err error, want, errPart string) {
	t.Helper()
	if errPart == "" {
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", fn, got, err, want)
		}
		return
	}
	if err == nil {
		t.Errorf("%s = %q, want an error containing %q", fn, got, errPart)
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "token file "+path+": ") || !strings.Contains(msg, errPart) || strings.Contains(msg, "\n") {
		t.Errorf("%s error %q: want one line \"token file %s: ...%s...\"", fn, msg, path, errPart)
	}
	if got != "" {
		t.Errorf("%s returned token %q with an error", fn, got)
	}
}

func TestLoadOrCreateTokenUncreatable(t *testing.T) {
	// The parent "directory" is a file: no one, root included, can create it.
	parent := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(parent, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(parent, "join.token")
	tok, created, err := LoadOrCreateToken(path)
	if err == nil || created || tok != "" || !strings.HasPrefix(err.Error(), "token file "+path+": ") {
		t.Fatalf("LoadOrCreateToken = %q, %v, %v", tok, created, err)
	}
}

func TestLoadOrCreateTokenDirectory(t *testing.T) {
	path := t.TempDir() // a directory where the file should be
	_, _, err := LoadOrCreateToken(path)
	if err == nil || !strings.HasPrefix(err.Error(), "token file "+path+": ") || strings.Count(err.Error(), path) != 1 {
		t.Fatalf("err = %v", err)
	}
}

func TestEqual(t *testing.T) {
	const tok = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name      string
		got, want string
		equal     bool
	}{
		{"same", tok, tok, true},
		{"different", "fedcba9876543210fedcba9876543210", tok, false},
		{"last byte", tok[:len(tok)-1] + "0", tok, false},
		{"prefix", tok[:16], tok, false},
		{"longer", tok + "0", tok, false},
		{"case", strings.ToUpper(tok), tok, false},
		{"empty got", "", tok, false},
		{"empty want", tok, "", false},
		{"both empty", "", "", false},
		{"short but same", "x", "x", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Equal(tt.got, tt.want); got != tt.equal {
				t.Fatalf("Equal(%q, %q) = %v, want %v", tt.got, tt.want, got, tt.equal)
			}
		})
	}
}

func TestBearer(t *testing.T) {
	tests := []struct {
		header string
		want   string
	}{
		{"Bearer abc", "abc"},
		{"bearer abc", "abc"},
		{"BEARER   abc  ", "abc"},
		{"Basic abc", ""},
		{"Bearer", ""},
		{"Bearerabc", ""},
		{"abc", ""},
		{"", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		if got := BearerToken(r); got != tt.want {
			t.Errorf("BearerToken(%q) = %q, want %q", tt.header, got, tt.want)
		}
	}
	r := httptest.NewRequest("GET", "/", nil)
	SetBearer(r.Header, "tok-123")
	if got := r.Header.Get("Authorization"); got != "Bearer tok-123" {
		t.Fatalf("SetBearer: header %q", got)
	}
	if got := BearerToken(r); got != "tok-123" {
		t.Fatalf("BearerToken after SetBearer = %q", got)
	}
}

func TestRequire(t *testing.T) {
	const tok = "0123456789abcdef0123456789abcdef"
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "welcome") })
	tests := []struct {
		name   string
		token  string // what the server requires
		header string // Authorization sent, "" for none
		code   int
	}{
		{"right token", tok, "Bearer " + tok, 200},
		{"lowercase scheme", tok, "bearer " + tok, 200},
		{"no header", tok, "", 401},
		{"wrong token", tok, "Bearer " + strings.Repeat("0", len(tok)), 401},
		{"prefix of token", tok, "Bearer " + tok[:20], 401},
		{"basic auth", tok, "Basic " + tok, 401},
		{"bare token", tok, tok, 401},
		{"server without token", "", "Bearer ", 401},
		{"server without token, any", "", "Bearer x", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(Require(tt.token, ok))
			defer srv.Close()
			req, _ := http.NewRequest("POST", srv.URL+"/v1/agent", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tt.code, body)
			}
			switch tt.code {
			case 200:
				if string(body) != "welcome" {
					t.Fatalf("body %q", body)
				}
			case 401:
				if string(body) != `{"error":"missing or wrong join token"}`+"\n" {
					t.Fatalf("401 body %q", body)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Fatalf("401 content type %q", ct)
				}
			}
		})
	}
}

// The fallback for file systems without hard links creates the file once
// and hands later callers the token it holds.
func TestCreateInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "join.token")
	tok, created, err := createInPlace(path, strings.Repeat("ab", 32))
	if err != nil || !created || tok != strings.Repeat("ab", 32) {
		t.Fatalf("first: %q, %v, %v", tok, created, err)
	}
	tok, created, err = createInPlace(path, strings.Repeat("cd", 32))
	if err != nil || created || tok != strings.Repeat("ab", 32) {
		t.Fatalf("second: %q, %v, %v; want the first token, not created", tok, created, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v, %v", st, err)
	}
}
