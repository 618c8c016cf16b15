package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
)

// The files of a material directory. The server's key never leaves it;
// clients read only the certificate (their trust anchor) and the flight.
const (
	CertFile   = "cert.pem"
	KeyFile    = "key.pem"
	FlightFile = "flight.bin"
)

// Material is what both ends of a measurement must agree on: the server's
// ECDSA P-256 certificate (self-signed, for "localhost" and the loopback
// IPs), the pool clients verify it with, and the recorded flight.
type Material struct {
	// Cert carries the private key only when the material was prepared
	// for a server (Prepare); Open leaves it empty.
	Cert   tls.Certificate
	Roots  *x509.CertPool
	Flight *Flight
}

// Prepare loads the material of dir, creating dir and whatever is missing:
// a fresh certificate and key, and a flight recorded against that
// certificate. A flight is re-recorded whenever a new certificate is made,
// since the recorded certificate flight must be the one clients trust.
func Prepare(dir string) (*Material, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("material dir: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	fresh := false
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if cert, err = newCertFiles(certPath, keyPath); err != nil {
			return nil, err
		}
		fresh = true
	case err != nil:
		return nil, fmt.Errorf("material: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("material: %s: %w", certPath, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)

	flightPath := filepath.Join(dir, FlightFile)
	f, err := readFlight(flightPath)
	if fresh || errors.Is(err, fs.ErrNotExist) {
		if f, err = RecordFlight(cert, roots); err != nil {
			return nil, err
		}
		b, err := f.MarshalBinary()
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(flightPath, b, 0o644); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	return &Material{Cert: cert, Roots: roots, Flight: f}, nil
}

// Open loads the client's part of dir's material, which Prepare made.
func Open(dir string) (*Material, error) {
	certPath := filepath.Join(dir, CertFile)
	pemBytes, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("material: %w (start \"haka-bench serve --dir %s\" first; it creates it)", err, dir)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("material: no certificate in %s", certPath)
	}
	f, err := readFlight(filepath.Join(dir, FlightFile))
	if err != nil {
		return nil, err
	}
	return &Material{Roots: roots, Flight: f}, nil
}

func readFlight(path string) (*Flight, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("material: %w", err)
	}
	var f Flight
	if err := f.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("material: %s: %w", path, err)
	}
	return &f, nil
}

func newCertFiles(certPath, keyPath string) (tls.Certificate, error) {
	cert, _, err := tlspeer.NewCert("localhost")
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("material: new certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("material: encoding the key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a
// client starting at the same moment reads the old file or the new one,
// never half of one.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("material: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("material: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("material: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	return nil
}
