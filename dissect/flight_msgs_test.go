package dissect

import "fmt"

// serverFlight is what parseServerFlight found in a server's cleartext
// handshake messages.
type serverFlight struct {
	hello   *ServerHello
	cert    *Certificate
	status  *CertificateStatus
	ske     *ServerKeyExchange
	certReq *CertificateRequest
	ticket  *NewSessionTicket
	done    bool
}

// parseServerFlight parses a server's handshake messages in order, feeding
// each parser what the ServerHello negotiated, as the state machine does.
func parseServerFlight(msgs []hsMsg) (serverFlight, error) {
	var f serverFlight
	version, kx := VersionTLS12, KeyExchangeUnknown
	for i, m := range msgs {
		var err error
		switch m.typ {
		case MsgHelloRequest:
			if len(m.body) != 0 {
				err = fmt.Errorf("hello_request of %d bytes", len(m.body))
			}
		case MsgServerHello:
			f.hello, err = ParseServerHello(m.body)
			if err == nil {
				version, kx = f.hello.Version(), f.hello.KeyExchange()
			}
		case MsgCertificate:
			f.cert, err = ParseCertificate(m.body, version)
		case MsgCertificateStatus:
			f.status, err = ParseCertificateStatus(m.body)
		case MsgServerKeyExchange:
			f.ske, err = ParseServerKeyExchange(m.body, kx, version)
		case MsgCertificateRequest:
			f.certReq, err = ParseCertificateRequest(m.body, version)
		case MsgServerHelloDone:
			err = ParseServerHelloDone(m.body)
			f.done = true
		case MsgNewSessionTicket:
			f.ticket, err = ParseNewSessionTicket(m.body, version)
		case MsgEncryptedExtensions:
			_, err = ParseEncryptedExtensions(m.body)
		case MsgFinished:
			_, err = ParseFinished(m.body)
		default:
			err = fmt.Errorf("message %d: unexpected %s in a server flight", i, m.typ)
		}
		if err != nil {
			return f, err
		}
	}
	return f, nil
}
