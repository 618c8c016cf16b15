package dissect

import (
	"crypto/md5"
	"encoding/hex"
)

// JA3 and JA3S (Salesforce, BSD-3-Clause): the decimal values of a hello's
// fields, "-" within a field, "," between fields, GREASE values (RFC 8701)
// left out, and the MD5 of that string.
//
//	JA3:  SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats
//	JA3S: SSLVersion,Cipher,Extensions
//
// SSLVersion is the legacy version field of the hello (771 for TLS 1.3 too).
//
// SSLv2-format hellos: the reference implementation (ja3.py) reads TLS
// records only and gives no JA3 for them. We fingerprint them anyway, since
// scanners are the main senders of SSLv2 hellos and rules want to match
// them: the version field, the cipher specs that are TLS cipher suites
// (first byte zero) in order, and three empty fields, e.g.
// "769,57-56-53-...,,,". Cipher specs that only exist in SSLv2 (first
// byte non-zero) are left out: they have no 16-bit value to print.

// jaScratch is the size of the stack buffers the fingerprints build their
// strings in: a Chrome hello's JA3 string is about 250 bytes, so 512
// bytes keep every common hello off the heap; larger ones grow into it.
const jaScratch = 512

// AppendJA3 appends the JA3 string of h to dst.
func (h *ClientHello) AppendJA3(dst []byte) []byte {
	dst = appendUint16Decimal(dst, h.LegacyVersion)
	dst = append(dst, ',')
	dst = appendDecimalList(dst, h.CipherSuites)
	dst = append(dst, ',')
	first := true
	for _, e := range h.Extensions {
		if IsGREASE(e.Type) {
			continue
		}
		if !first {
			dst = append(dst, '-')
		}
		first = false
		dst = appendUint16Decimal(dst, e.Type)
	}
	dst = append(dst, ',')
	dst = appendDecimalList(dst, h.SupportedGroups)
	dst = append(dst, ',')
	for i, f := range h.ECPointFormats {
		if i > 0 {
			dst = append(dst, '-')
		}
		dst = appendUint16Decimal(dst, uint16(f))
	}
	return dst
}

// JA3 returns the JA3 string of h and its MD5 in lowercase hex.
func (h *ClientHello) JA3() (ja3, hash string) {
	var buf [jaScratch]byte
	b := h.AppendJA3(buf[:0])
	return string(b), md5Hex(b)
}

// AppendJA3S appends the JA3S string of m to dst.
func (m *ServerHello) AppendJA3S(dst []byte) []byte {
	dst = appendUint16Decimal(dst, m.LegacyVersion)
	dst = append(dst, ',')
	dst = appendUint16Decimal(dst, m.CipherSuite)
	dst = append(dst, ',')
	first := true
	for _, e := range m.Extensions {
		if IsGREASE(e.Type) {
			continue
		}
		if !first {
			dst = append(dst, '-')
		}
		first = false
		dst = appendUint16Decimal(dst, e.Type)
	}
	return dst
}

// JA3S returns the JA3S string of m and its MD5 in lowercase hex.
func (m *ServerHello) JA3S() (ja3s, hash string) {
	var buf [jaScratch]byte
	b := m.AppendJA3S(buf[:0])
	return string(b), md5Hex(b)
}

// decimalPairs holds "00" to "99": appendUint16Decimal writes two digits
// per division, which matters here as JA3 prints some fifty numbers per
// hello and strconv's general path costs a third of the fingerprint.
const decimalPairs = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

// appendUint16Decimal appends v in decimal.
func appendUint16Decimal(dst []byte, v uint16) []byte {
	switch {
	case v < 10:
		return append(dst, byte('0'+v))
	case v < 100:
		return append(dst, decimalPairs[2*v], decimalPairs[2*v+1])
	case v < 1000:
		r := v % 100
		return append(dst, byte('0'+v/100), decimalPairs[2*r], decimalPairs[2*r+1])
	case v < 10000:
		q, r := v/100, v%100
		return append(dst, decimalPairs[2*q], decimalPairs[2*q+1], decimalPairs[2*r], decimalPairs[2*r+1])
	}
	q, r := v/10000, v%10000
	hi, lo := r/100, r%100
	return append(dst, byte('0'+q), decimalPairs[2*hi], decimalPairs[2*hi+1], decimalPairs[2*lo], decimalPairs[2*lo+1])
}

func appendDecimalList(dst []byte, vs []uint16) []byte {
	first := true
	for _, v := range vs {
		if IsGREASE(v) {
			continue
		}
		if !first {
			dst = append(dst, '-')
		}
		first = false
		dst = appendUint16Decimal(dst, v)
	}
	return dst
}

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	var out [2 * md5.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}
