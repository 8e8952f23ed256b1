package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bulsajo/bulsajo/internal/atomicfile"
)

// Files LoadOrCreateServerTLS keeps in its directory.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
)

const (
	caLifetime = 10 * 365 * 24 * time.Hour
	// renewBefore: a server certificate this close to expiry is re-issued.
	renewBefore = 30 * 24 * time.Hour
)

func tlsErr(dir, format string, args ...any) error {
	return fmt.Errorf("tls dir %s: %s", dir, fmt.Sprintf(format, args...))
}

// LoadOrCreateServerTLS returns the coordinator's TLS configuration from
// dir, creating what is missing: a private CA (ECDSA P-256, ten years;
// CAFile, CAKeyFile) and a server certificate it signs (ServerFile,
// ServerKeyFile) for hosts, "localhost", the loopback addresses and every
// address of this machine's interfaces. Keys are written 0600.
//
// An existing CA is kept. The server certificate is re-issued from it when
// it does not cover every host asked for, or is about to expire, so agents
// that trust caFile keep trusting the coordinator. created reports whether a
// new CA was made (caFile must then be copied to the agents).
func LoadOrCreateServerTLS(dir string, hosts []string) (cfg *tls.Config, caFile string, created bool, err error) {
	caFile = filepath.Join(dir, CAFile)
	caKeyFile := filepath.Join(dir, CAKeyFile)
	certFile := filepath.Join(dir, ServerFile)
	keyFile := filepath.Join(dir, ServerKeyFile)
	dnsNames, ips := serverNames(hosts)

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", false, tlsErr(dir, "%v", err)
	}
	var ca *x509.Certificate
	var caKey crypto.Signer
	switch haveCA, haveKey := exists(caFile), exists(caKeyFile); {
	case haveCA && haveKey:
		ca, caKey, err = loadCA(caFile, caKeyFile)
		if err != nil {
			return nil, "", false, tlsErr(dir, "%v", err)
		}
	case haveCA || haveKey:
		return nil, "", false, tlsErr(dir, "found only one of %s and %s: restore the other or remove both to make a new CA", CAFile, CAKeyFile)
	default:
		ca, caKey, err = newCA(caFile, caKeyFile)
		if err != nil {
			return nil, "", false, tlsErr(dir, "%v", err)
		}
		created = true
	}

	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if created || err != nil || !serverCertOK(cert.Leaf, ca, dnsNames, ips) {
		if err := issueServer(ca, caKey, certFile, keyFile, dnsNames, ips); err != nil {
			return nil, "", false, tlsErr(dir, "%v", err)
		}
		if cert, err = tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, "", false, tlsErr(dir, "%v", err)
		}
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, caFile, created, nil
}

// ServerTLSFromFiles returns a server configuration with a certificate the
// user brings (PEM files; certFile may hold the whole chain).
func ServerTLSFromFiles(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s, key %s: %v", certFile, keyFile, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// ClientTLS returns a client configuration that trusts exactly the CA
// certificates in caFile, or the system roots if caFile is "".
func ClientTLS(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("ca file %s: %v", caFile, unwrapPath(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("ca file %s: no PEM certificate in it", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// serverNames is what the server certificate must name.
func serverNames(hosts []string) (dnsNames []string, ips []net.IP) {
	addIP := func(ip net.IP) {
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	add := func(h string) {
		h = strings.TrimSpace(h)
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if h == "" {
			return
		}
		if ip := net.ParseIP(h); ip != nil {
			addIP(ip)
		} else if h = strings.ToLower(h); !slices.Contains(dnsNames, h) {
			dnsNames = append(dnsNames, h)
		}
	}
	for _, h := range hosts {
		add(h)
	}
	add("localhost")
	addIP(net.IPv4(127, 0, 0, 1))
	addIP(net.IPv6loopback)
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				addIP(n.IP)
			}
		}
	}
	return dnsNames, ips
}

// serverCertOK: leaf is signed by ca, covers every name, and is not about
// to expire.
func serverCertOK(leaf, ca *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	if leaf == nil || leaf.CheckSignatureFrom(ca) != nil || time.Now().Add(renewBefore).After(leaf.NotAfter) {
		return false
	}
	for _, n := range dnsNames {
		if leaf.VerifyHostname(n) != nil {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func newCA(caFile, caKeyFile string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"bulsajo"}, CommonName: strings.TrimSpace("bulsajo CA " + host)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	// The key first: a CA certificate without its key is refused on load.
	if err := writeKey(caKeyFile, key); err != nil {
		return nil, nil, err
	}
	if err := atomicfile.WriteDurable(caFile, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

func issueServer(ca *x509.Certificate, caKey crypto.Signer, certFile, keyFile string, dnsNames []string, ips []net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	now := time.Now()
	cn := "bulsajo coordinator"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"bulsajo"}, CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     ca.NotAfter, // as long as the CA: nothing to renew while it runs
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyFile, key); err != nil {
		return err
	}
	return atomicfile.WriteDurable(certFile, pemBlock("CERTIFICATE", der), 0o644)
}

func loadCA(caFile, caKeyFile string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(caFile, caKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("ca %s: %v", caFile, err)
	}
	ca := pair.Leaf
	if ca == nil {
		if ca, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("ca %s: %v", caFile, err)
		}
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !ca.IsCA {
		return nil, nil, fmt.Errorf("ca %s: not a CA certificate with a signing key", caFile)
	}
	return ca, signer, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return atomicfile.WriteDurable(path, pemBlock("PRIVATE KEY", der), 0o600)
}

func pemBlock(typ string, der []byte) []byte {
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
	return b.Bytes()
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// unwrapPath drops the path a *fs.PathError repeats.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
