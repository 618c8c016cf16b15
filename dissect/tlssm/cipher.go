package tlssm

import (
	"sort"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// The record protection of a cipher suite, which decides the smallest
// record an encrypted heartbeat can be (Heartbleed layer 4).
type protection uint8

const (
	protUnknown protection = iota
	// protNull and protStream (RC4): the plaintext and a MAC.
	protNull
	protStream
	// protCBC: an explicit IV from TLS 1.1 on, then plaintext, MAC and at
	// least the padding_length byte, rounded up to the block size (or the
	// plaintext padded, then the MAC, with encrypt_then_mac).
	protCBC
	// protGCM, protCCM: an 8-byte explicit nonce and a 16-byte tag
	// (RFC 5288, RFC 6655); protCCM8: an 8-byte tag.
	protGCM
	protCCM
	protCCM8
	// protChaCha: no explicit nonce, a 16-byte tag (RFC 7905).
	protChaCha
)

// Sizes that enter the computation, in bytes.
const (
	// minHeartbeat is the smallest heartbeat message: type, payload_length,
	// an empty payload and the 16 bytes of padding RFC 6520 requires.
	minHeartbeat = 1 + 2 + dissect.HeartbeatMinPadding
	// aeadExplicitNonce is the per-record nonce GCM and CCM carry in TLS 1.2.
	aeadExplicitNonce = 8
	aeadTag           = 16
	ccm8Tag           = 8
	// truncatedMAC is the MAC length with truncated_hmac (RFC 6066 7).
	truncatedMAC = 10

	md5Len    = 16
	sha1Len   = 20
	sha256Len = 32
	sha384Len = 48
	block64   = 8  // DES, 3DES, IDEA, RC2
	block128  = 16 // AES, Camellia, SEED, ARIA
)

// extTruncatedHMAC is the truncated_hmac extension (RFC 6066 7), which
// dissect does not decode.
const extTruncatedHMAC uint16 = 4

type suiteProtection struct {
	lo, hi uint16
	prot   protection
	block  uint8 // CBC only
	mac    uint8 // MAC length; 0 for the AEADs
}

// suiteProtections maps the cipher suites of the IANA registry that can
// carry a heartbeat (SSL 3.0 to TLS 1.2) to their record protection,
// sorted by lo. A suite that is not here (GOST, TLS 1.3, unassigned) is
// not checked.
var suiteProtections = buildSuiteProtections()

func buildSuiteProtections() []suiteProtection {
	var t []suiteProtection
	add := func(lo, hi uint16, p protection, block, mac uint8) {
		t = append(t, suiteProtection{lo, hi, p, block, mac})
	}
	cbc := func(lo, hi uint16, block, mac uint8) { add(lo, hi, protCBC, block, mac) }
	// evenOdd: the suites of lo..hi alternate a 128-bit key with SHA-256
	// and a 256-bit key with SHA-384 (the ARIA and Camellia CBC blocks).
	evenOdd := func(lo, hi uint16) {
		for s := lo; s <= hi; s += 2 {
			cbc(s, s, block128, sha256Len)
			cbc(s+1, s+1, block128, sha384Len)
		}
	}
	// RFC 5246, RFC 4346, RFC 2712 (Kerberos), RFC 4279 (PSK).
	add(0x0001, 0x0001, protNull, 0, md5Len)
	add(0x0002, 0x0002, protNull, 0, sha1Len)
	add(0x0003, 0x0004, protStream, 0, md5Len)
	add(0x0005, 0x0005, protStream, 0, sha1Len)
	cbc(0x0006, 0x0006, block64, md5Len)
	cbc(0x0007, 0x0016, block64, sha1Len)
	add(0x0017, 0x0018, protStream, 0, md5Len)
	cbc(0x0019, 0x001b, block64, sha1Len)
	cbc(0x001e, 0x001f, block64, sha1Len)
	add(0x0020, 0x0020, protStream, 0, sha1Len)
	cbc(0x0021, 0x0021, block64, sha1Len)
	cbc(0x0022, 0x0023, block64, md5Len)
	add(0x0024, 0x0024, protStream, 0, md5Len)
	cbc(0x0025, 0x0025, block64, md5Len)
	cbc(0x0026, 0x0027, block64, sha1Len)
	add(0x0028, 0x0028, protStream, 0, sha1Len)
	cbc(0x0029, 0x002a, block64, md5Len)
	add(0x002b, 0x002b, protStream, 0, md5Len)
	add(0x002c, 0x002e, protNull, 0, sha1Len)
	cbc(0x002f, 0x003a, block128, sha1Len)
	add(0x003b, 0x003b, protNull, 0, sha256Len)
	cbc(0x003c, 0x0040, block128, sha256Len)
	cbc(0x0041, 0x0046, block128, sha1Len) // Camellia, RFC 5932
	// The 1024-bit export suites of draft-ietf-tls-56-bit-ciphersuites,
	// which OpenSSL 0.9.x offered.
	add(0x0060, 0x0060, protStream, 0, md5Len)
	cbc(0x0061, 0x0061, block64, md5Len)
	cbc(0x0062, 0x0063, block64, sha1Len)
	add(0x0064, 0x0066, protStream, 0, sha1Len)
	cbc(0x0067, 0x006d, block128, sha256Len)
	cbc(0x0084, 0x0089, block128, sha1Len) // Camellia
	for _, lo := range []uint16{0x008a, 0x008e, 0x0092} {
		add(lo, lo, protStream, 0, sha1Len)
		cbc(lo+1, lo+1, block64, sha1Len)
		cbc(lo+2, lo+3, block128, sha1Len)
	}
	cbc(0x0096, 0x009b, block128, sha1Len) // SEED, RFC 4162
	add(0x009c, 0x00ad, protGCM, 0, 0)
	// RFC 5487: the PSK suites with SHA-256 and SHA-384.
	for _, lo := range []uint16{0x00ae, 0x00b2, 0x00b6} {
		cbc(lo, lo, block128, sha256Len)
		cbc(lo+1, lo+1, block128, sha384Len)
		add(lo+2, lo+2, protNull, 0, sha256Len)
		add(lo+3, lo+3, protNull, 0, sha384Len)
	}
	cbc(0x00ba, 0x00c5, block128, sha256Len) // Camellia, RFC 5932
	// RFC 8422 and RFC 4492: five suites per ECDH(E) key exchange.
	for lo := uint16(0xc001); lo <= 0xc015; lo += 5 {
		add(lo, lo, protNull, 0, sha1Len)
		add(lo+1, lo+1, protStream, 0, sha1Len)
		cbc(lo+2, lo+2, block64, sha1Len)
		cbc(lo+3, lo+4, block128, sha1Len)
	}
	cbc(0xc01a, 0xc01c, block64, sha1Len) // SRP, RFC 5054
	cbc(0xc01d, 0xc022, block128, sha1Len)
	evenOdd(0xc023, 0xc02a) // RFC 5289
	add(0xc02b, 0xc032, protGCM, 0, 0)
	// RFC 5489: ECDHE_PSK.
	add(0xc033, 0xc033, protStream, 0, sha1Len)
	cbc(0xc034, 0xc034, block64, sha1Len)
	cbc(0xc035, 0xc036, block128, sha1Len)
	cbc(0xc037, 0xc037, block128, sha256Len)
	cbc(0xc038, 0xc038, block128, sha384Len)
	add(0xc039, 0xc039, protNull, 0, sha1Len)
	add(0xc03a, 0xc03a, protNull, 0, sha256Len)
	add(0xc03b, 0xc03b, protNull, 0, sha384Len)
	// ARIA (RFC 6209) and Camellia (RFC 6367): CBC and GCM blocks.
	evenOdd(0xc03c, 0xc04f)
	add(0xc050, 0xc063, protGCM, 0, 0)
	evenOdd(0xc064, 0xc069)
	add(0xc06a, 0xc06f, protGCM, 0, 0)
	evenOdd(0xc070, 0xc079)
	add(0xc07a, 0xc093, protGCM, 0, 0)
	evenOdd(0xc094, 0xc09b)
	// AES-CCM, RFC 6655 and RFC 7251: four CCM then four CCM_8, then the
	// ECDHE_ECDSA pairs.
	add(0xc09c, 0xc09f, protCCM, 0, 0)
	add(0xc0a0, 0xc0a3, protCCM8, 0, 0)
	add(0xc0a4, 0xc0a7, protCCM, 0, 0)
	add(0xc0a8, 0xc0ab, protCCM8, 0, 0)
	add(0xc0ac, 0xc0ad, protCCM, 0, 0)
	add(0xc0ae, 0xc0af, protCCM8, 0, 0)
	// ECCPWD, RFC 8492.
	add(0xc0b0, 0xc0b1, protGCM, 0, 0)
	add(0xc0b2, 0xc0b3, protCCM, 0, 0)
	// ChaCha20-Poly1305: the pre-standard codepoints of early Chrome, then
	// RFC 7905.
	add(0xcc13, 0xcc15, protChaCha, 0, 0)
	add(0xcca8, 0xccae, protChaCha, 0, 0)
	// RFC 8442: ECDHE_PSK with AES-GCM and AES-CCM.
	add(0xd001, 0xd002, protGCM, 0, 0)
	add(0xd003, 0xd003, protCCM8, 0, 0)
	add(0xd005, 0xd005, protCCM, 0, 0)
	sort.Slice(t, func(i, j int) bool { return t[i].lo < t[j].lo })
	return t
}

func lookupProtection(suite uint16) (suiteProtection, bool) {
	t := suiteProtections
	i := sort.Search(len(t), func(i int) bool { return t[i].hi >= suite })
	if i < len(t) && t[i].lo <= suite {
		return t[i], true
	}
	return suiteProtection{}, false
}

// recordProtection is what the ServerHello negotiated for the records that
// follow the switch to encryption.
type recordProtection struct {
	suite   uint16
	version uint16
	// etm: encrypt_then_mac (RFC 7366); truncMAC: truncated_hmac.
	etm, truncMAC bool
	// compressed: a compression method other than null, which can make a
	// record shorter than its plaintext: no minimum holds then.
	compressed bool
}

// minHeartbeatRecord returns the length of the smallest record that can
// carry a heartbeat message under p, and false when it cannot be told (an
// unknown suite, compression, TLS 1.3, which has no heartbeat).
func minHeartbeatRecord(p recordProtection) (int, bool) {
	if p.compressed || p.version < dissect.VersionSSL30 || p.version > dissect.VersionTLS12 {
		return 0, false
	}
	sp, ok := lookupProtection(p.suite)
	if !ok {
		return 0, false
	}
	mac := int(sp.mac)
	if p.truncMAC && mac > truncatedMAC {
		mac = truncatedMAC
	}
	switch sp.prot {
	case protNull, protStream:
		return minHeartbeat + mac, true
	case protCBC:
		b := int(sp.block)
		iv := 0
		if p.version >= dissect.VersionTLS11 {
			// TLS 1.1 puts an explicit IV in front of every record (RFC
			// 4346 6.2.3.2); SSL 3.0 and TLS 1.0 chain the last block.
			iv = b
		}
		if p.etm {
			return iv + roundUp(minHeartbeat+1, b) + mac, true
		}
		return iv + roundUp(minHeartbeat+mac+1, b), true
	case protGCM, protCCM:
		return aeadExplicitNonce + minHeartbeat + aeadTag, true
	case protCCM8:
		return aeadExplicitNonce + minHeartbeat + ccm8Tag, true
	case protChaCha:
		return minHeartbeat + aeadTag, true
	}
	return 0, false
}

func roundUp(n, b int) int { return (n + b - 1) / b * b }
