package auth

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadOrCreateServerTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	cfg, caFile, created, err := LoadOrCreateServerTLS(dir, []string{"coord.example.com", "10.9.8.7", "[fd00::1]:8470", ""})
	if err != nil || !created {
		t.Fatalf("first call: created %v, err %v", created, err)
	}
	if caFile != filepath.Join(dir, CAFile) {
		t.Fatalf("caFile %q", caFile)
	}
	if cfg.MinVersion != tls.VersionTLS12 || len(cfg.Certificates) != 1 {
		t.Fatalf("config: min version %x, %d certificates", cfg.MinVersion, len(cfg.Certificates))
	}
	for name, want := range map[string]os.FileMode{CAFile: 0o644, CAKeyFile: 0o600, ServerFile: 0o644, ServerKeyFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", name, st.Mode().Perm(), want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		t.Errorf("dir holds %d files, want 4 (temporary files left?)", len(entries))
	}

	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"coord.example.com", "localhost", "127.0.0.1", "::1", "10.9.8.7", "fd00::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not cover %s: %v", h, err)
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !slices.ContainsFunc(leaf.IPAddresses, n.IP.Equal) {
				t.Errorf("server certificate lacks interface address %s", n.IP)
			}
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(readFile(t, caFile))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "coord.example.com"}); err != nil {
		t.Fatalf("server certificate does not verify against the CA: %v", err)
	}
	ca, _, err := loadCA(caFile, filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if years := ca.NotAfter.Sub(ca.NotBefore).Hours() / 24 / 365; years < 9.9 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}

	// Reload: same CA, same server certificate, nothing created.
	caPEM, serverPEM := readFile(t, caFile), readFile(t, filepath.Join(dir, ServerFile))
	cfg2, caFile2, created, err := LoadOrCreateServerTLS(dir, []string{"coord.example.com", "10.9.8.7"})
	if err != nil || created || caFile2 != caFile {
		t.Fatalf("reload: %q, created %v, err %v", caFile2, created, err)
	}
	if !bytes.Equal(readFile(t, caFile), caPEM) || !bytes.Equal(readFile(t, filepath.Join(dir, ServerFile)), serverPEM) {
		t.Fatal("reload rewrote the certificates")
	}
	if !bytes.Equal(cfg2.Certificates[0].Certificate[0], cfg.Certificates[0].Certificate[0]) {
		t.Fatal("reload serves another certificate")
	}

	// A new host: the server certificate is re-issued by the same CA.
	cfg3, _, created, err := LoadOrCreateServerTLS(dir, []string{"new.example.com"})
	if err != nil || created {
		t.Fatalf("new host: created %v, err %v", created, err)
	}
	if !bytes.Equal(readFile(t, caFile), caPEM) {
		t.Fatal("a new host replaced the CA")
	}
	leaf3, _ := x509.ParseCertificate(cfg3.Certificates[0].Certificate[0])
	if _, err := leaf3.Verify(x509.VerifyOptions{Roots: pool, DNSName: "new.example.com"}); err != nil {
		t.Fatalf("re-issued certificate: %v", err)
	}
}

func TestLoadOrCreateServerTLSBroken(t *testing.T) {
	t.Run("CA key missing", func(t *testing.T) {
		dir := t.TempDir()
		if _, _, _, err := LoadOrCreateServerTLS(dir, nil); err != nil {
			t.Fatal(err)
		}
		caPEM := readFile(t, filepath.Join(dir, CAFile))
		os.Remove(filepath.Join(dir, CAKeyFile))
		_, _, _, err := LoadOrCreateServerTLS(dir, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "tls dir "+dir+": ") {
			t.Fatalf("err = %v", err)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, CAFile)), caPEM) {
			t.Fatal("the CA was replaced")
		}
	})
	t.Run("server files missing", func(t *testing.T) {
		dir := t.TempDir()
		if _, _, _, err := LoadOrCreateServerTLS(dir, nil); err != nil {
			t.Fatal(err)
		}
		caPEM := readFile(t, filepath.Join(dir, CAFile))
		os.Remove(filepath.Join(dir, ServerKeyFile))
		if _, _, created, err := LoadOrCreateServerTLS(dir, nil); err != nil || created {
			t.Fatalf("created %v, err %v", created, err)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, CAFile)), caPEM) {
			t.Fatal("the CA was replaced")
		}
	})
	t.Run("garbage CA", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, CAFile), []byte("junk"), 0o644)
		os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("junk"), 0o600)
		_, _, _, err := LoadOrCreateServerTLS(dir, nil)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Fatalf("err = %v", err)
		}
	})
}

// serve starts an https server with cfg; it answers "ok".
func serve(t *testing.T, cfg *tls.Config) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func get(cfg *tls.Config, url string) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestTLSHandshake(t *testing.T) {
	cfg, caFile, _, err := LoadOrCreateServerTLS(t.TempDir(), []string{"coord.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	_, otherCA, _, err := LoadOrCreateServerTLS(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, cfg)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	trusting, err := ClientTLS(caFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if body, err := get(trusting, "https://"+net.JoinHostPort(host, port)+"/"); err != nil || body != "ok" {
			t.Fatalf("client trusting the CA, via %s: %q, %v", host, body, err)
		}
	}

	stranger, err := ClientTLS(otherCA)
	if err != nil {
		t.Fatal(err)
	}
	_, err = get(stranger, srv.URL)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client with another CA: err = %v, want an unknown authority error", err)
	}

	system, err := ClientTLS("")
	if err != nil || system.RootCAs != nil || system.MinVersion != tls.VersionTLS12 {
		t.Fatalf("ClientTLS(\"\") = %+v, %v", system, err)
	}
	if _, err := get(system, srv.URL); err == nil {
		t.Fatal("system roots trusted the private CA")
	}

	// TLS 1.1 is refused.
	old := trusting.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if _, err := get(old, srv.URL); err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
}

func TestServerTLSFromFiles(t *testing.T) {
	dir := t.TempDir()
	_, caFile, _, err := LoadOrCreateServerTLS(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ServerTLSFromFiles(filepath.Join(dir, ServerFile), filepath.Join(dir, ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("min version %x", cfg.MinVersion)
	}
	client, err := ClientTLS(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if body, err := get(client, serve(t, cfg).URL); err != nil || body != "ok" {
		t.Fatalf("%q, %v", body, err)
	}

	missing := filepath.Join(dir, "nope.pem")
	if _, err := ServerTLSFromFiles(missing, filepath.Join(dir, ServerKeyFile)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing cert: %v", err)
	}
	// A key that does not match the certificate.
	if _, err := ServerTLSFromFiles(filepath.Join(dir, ServerFile), filepath.Join(dir, CAKeyFile)); err == nil {
		t.Fatal("mismatched key accepted")
	}
}

func TestClientTLSErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate\n"), 0o644)
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct{ file, part string }{
		{junk, "no PEM certificate"},
		{missing, "no such file"},
	} {
		_, err := ClientTLS(tt.file)
		if err == nil || !strings.HasPrefix(err.Error(), "ca file "+tt.file+": ") || !strings.Contains(err.Error(), tt.part) ||
			strings.Count(err.Error(), tt.file) != 1 {
			t.Errorf("ClientTLS(%s) = %v", tt.file, err)
		}
	}
}
