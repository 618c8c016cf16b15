package dissect_test

import (
	"fmt"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// The loop of an inspector over one direction: present every byte not
// consumed yet, take units until NeedMore.
func ExampleConn() {
	c := dissect.NewConn(dissect.Limits{})
	// A ClientHello record whose message continues in a second record,
	// arriving in one read with the start of that second record.
	msg := append([]byte{1, 0, 0, 6}, "abcdef"...)
	first := append([]byte{22, 3, 1, 0, 7}, msg[:7]...)
	second := append([]byte{22, 3, 1, 0, 3}, msg[7:]...)
	reads := [][]byte{append(first, second[:2]...), second[2:]}

	var pending []byte
	for _, read := range reads {
		pending = append(pending, read...)
		for {
			u, n, err := c.Next(dissect.Up, pending)
			if err != nil {
				fmt.Println("parse error:", err)
				return
			}
			if u.Kind == dissect.NeedMore {
				break
			}
			switch u.Kind {
			case dissect.UnitRecord:
				fmt.Printf("record %s of %d bytes at %d\n", u.Header.Type, u.Header.Length, u.Start)
			case dissect.UnitMessage:
				fmt.Printf("message %d of %d bytes, from the record at %d: %q\n", u.Msg.Type, u.Msg.Length, u.Start, u.Msg.Body)
			}
			pending = pending[n:]
		}
		if start, ok := c.Incomplete(dissect.Up); ok {
			fmt.Printf("hold from %d: message incomplete\n", start)
		}
	}
	// Output:
	// record handshake of 7 bytes at 0
	// hold from 0: message incomplete
	// record handshake of 3 bytes at 12
	// message 1 of 6 bytes, from the record at 0: "abcdef"
}
