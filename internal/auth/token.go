// Package auth is how the coordinator and its agents trust each other: a
// shared join token (a bearer token every agent request carries) and TLS on
// the coordinator's port, with a private CA the coordinator creates on first
// start unless the user brings certificates.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

const (
	// MinTokenLen is the shortest token accepted from a file.
	MinTokenLen = 16
	// maxTokenFile bounds how much of a token file is read.
	maxTokenFile = 4096
	// tokenBytes is the entropy of a generated token (hex-encoded on disk).
	tokenBytes = 32
)

// tokenError is one line naming the file; it unwraps to the cause, so that
// errors.Is(err, fs.ErrNotExist) works on a missing file.
type tokenError struct {
	path, why string
	err       error
}

func (e *tokenError) Error() string { return "token file " + e.path + ": " + e.why }
func (e *tokenError) Unwrap() error { return e.err }

// errEmpty: the token file holds no token (written by hand, or left by a
// version that created it before writing it).
var errEmpty = errors.New("empty token")

func tokenErr(path string, err error) error {
	var pe *fs.PathError
	why := err.Error()
	if errors.As(err, &pe) && pe.Path == path {
		why = pe.Op + ": " + pe.Err.Error() // the path is already in front
	}
	return &tokenError{path: path, why: why, err: err}
}

// ReadToken reads the join token from path, never creating it. Surrounding
// whitespace is ignored; an empty, short or malformed token is an error.
func ReadToken(path string) (string, error) {
	tok, err := readToken(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", &tokenError{path: path, why: "not found (copy it from the coordinator)", err: fs.ErrNotExist}
	}
	return tok, err
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", tokenErr(path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", tokenErr(path, err)
	}
	if len(b) > maxTokenFile {
		return "", &tokenError{path: path, why: "too large to be a token"}
	}
	return checkToken(path, strings.TrimSpace(string(b)))
}

func checkToken(path, tok string) (string, error) {
	switch {
	case tok == "":
		return "", &tokenError{path: path, why: "empty", err: errEmpty}
	case len(tok) < MinTokenLen:
		return "", &tokenError{path: path, why: "token too short (at least 16 characters)"}
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return "", &tokenError{path: path, why: "token must be one word of printable ASCII"}
		}
	}
	return tok, nil
}

// LoadOrCreateToken returns the join token in path, creating the file (0600,
// in a 0700 directory if that is missing too) with a new random token if
// there is none; created says which. Two processes that race to create it
// end up with the same token.
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	tok, err := readToken(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return tok, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, tokenErr(path, err)
	}
	buf := make([]byte, tokenBytes)
	if _, err := rand.Read(buf); err != nil {
		return "", false, tokenErr(path, err)
	}
	tok = hex.EncodeToString(buf)
	// Written in full to a temporary file, then linked into place: the
	// token file never exists half-written (a racing creator or reader
	// that found it empty used to fail), and link refuses to replace one
	// another process made first.
	f, err := os.CreateTemp(filepath.Dir(path), ".token-*")
	if err != nil {
		return "", false, tokenErr(path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.WriteString(tok + "\n")
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", false, tokenErr(path, err)
	}
	if err := os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
		// Another process created it first: use its token.
		tok, err = readToken(path)
		return tok, false, err
	} else if err != nil {
		// A file system without hard links: create it in place.
		return createInPlace(path, tok)
	}
	return tok, true, nil
}

// createInPlace writes a new token file with O_EXCL, for file systems
// without hard links. A racing reader may see it empty for a moment.
func createInPlace(path, tok string) (string, bool, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		tok, err = readToken(path)
		return tok, false, err
	}
	if err != nil {
		return "", false, tokenErr(path, err)
	}
	_, err = f.WriteString(tok + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", false, tokenErr(path, err)
	}
	return tok, true, nil
}

// Equal reports whether got is the token want, in time that depends on
// neither the contents nor the lengths of the two. An empty want matches
// nothing.
func Equal(got, want string) bool {
	if want == "" {
		return false
	}
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// BearerToken returns the token of an "Authorization: Bearer X" header, or
// "" if the request has none.
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// SetBearer sets the Authorization header to carry token.
func SetBearer(h http.Header, token string) {
	h.Set("Authorization", "Bearer "+token)
}

// Require serves next only to requests that carry token as a bearer token;
// others get 401 with a one-line JSON error. An empty token admits nobody.
func Require(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Equal(BearerToken(r), token) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("WWW-Authenticate", `Bearer realm="bulsajo"`)
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"missing or wrong join token"}`+"\n")
			return
		}
		next.ServeHTTP(w, r)
	})
}
