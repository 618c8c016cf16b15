package dissect_test

import (
	"fmt"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// A ClientHello body, as the record layer hands it over once the handshake
// message is complete: here a TLS 1.2 hello for example.com offering two
// suites and h2.
var helloBody = []byte{
	0x03, 0x03, // client_version
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // random
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0x00,                               // session_id
	0x00, 0x04, 0xc0, 0x2f, 0x00, 0x9c, // cipher_suites
	0x01, 0x00, // compression_methods
	0x00, 0x1d, // extensions
	0x00, 0x00, 0x00, 0x10, 0x00, 0x0e, 0x00, 0x00, 0x0b, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
	0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, 'h', '2',
}

func ExampleParseClientHello() {
	h, err := dissect.ParseClientHello(helloBody)
	if err != nil {
		fmt.Println(err)
		return
	}
	fp := h.Fingerprint()
	fmt.Println(dissect.VersionName(h.LegacyVersion), h.ServerName, h.ALPNStrings(), h.CipherSuites)
	fmt.Println(fp.JA3)
	fmt.Println(fp.JA4)
	// Output:
	// TLS1.2 example.com [h2] [49199 156]
	// 771,49199-156,0-16,,
	// t12d0202h2_08dfa304a768_000000000000
}
