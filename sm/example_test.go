package sm_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/hakaproxy/haka-proxy/sm"
)

// The first states of an SSL machine, as in Haka's "State machine outlook":
// hello_request parses the client's records with the sslv3_client_hello
// grammar element and expects nothing from the server; a ClientHello raises
// the client_hello event for the rules and moves on, anything else fails
// the connection.
func Example() {
	type conn struct{ dropped bool } // what the rules act on
	type (
		Tr = sm.Transition[*conn, []byte, string]
		In = sm.Instance[*conn, []byte, string]
		Ev = sm.Event[[]byte, string]
	)
	sslv3ClientHello := &sm.Element[*conn, []byte, string]{
		Name: "sslv3_client_hello",
		Parse: func(_ *conn, _ sm.Direction, rec []byte) (string, error) {
			// A handshake record (22) whose first message is a ClientHello (1).
			if len(rec) < 6 || rec[0] != 22 || rec[1] != 3 || rec[5] != 1 {
				return "", errors.New("not a ClientHello record")
			}
			return fmt.Sprintf("ClientHello in a 3.%d record", rec[2]), nil
		},
	}

	ssl := sm.NewBuilder[*conn, []byte, string]("ssl")
	clientHello := ssl.RegisterEvent("client_hello")
	ssl.Hook(func(in *In, ev Ev) { // the rules
		fmt.Printf("rule on %s: %s\n", in.Machine().EventName(ev.ID), ev.Param)
	})

	ssl.Any().On(Tr{
		Event:   sm.EvFail,
		Execute: func(in *In, _ Ev) { in.Context().dropped = true },
	})

	helloRequest := ssl.BidirectionalState("hello_request", sslv3ClientHello, nil)
	clientHelloDone := ssl.BidirectionalState("client_hello_done", nil, nil)
	helloRequest.On(Tr{
		Event: sm.EvParseError,
		Jump:  sm.Fail,
	})
	helloRequest.On(Tr{
		Event:   sm.EvUp,
		Execute: func(in *In, ev Ev) { in.Trigger(clientHello, ev.Param) },
		Jump:    clientHelloDone.Name(),
	})
	ssl.Initial("hello_request")

	m, err := ssl.Build()
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Now()

	c := &conn{}
	in := m.New(c, now)
	in.Feed(sm.Up, []byte{22, 3, 1, 0, 200, 1}, now)
	fmt.Println("state:", in.State())

	c = &conn{}
	in = m.New(c, now)
	in.Feed(sm.Up, []byte("GET / HTTP/1.1\r\n"), now)
	fmt.Println("dropped:", c.dropped)
	fmt.Println(in.Reason())
	// Output:
	// rule on client_hello: ClientHello in a 3.1 record
	// state: client_hello_done
	// dropped: true
	// state machine "ssl": state "hello_request": on parse_error: not a ClientHello record
}
