package dissect

// Direction tells the two byte streams of a connection apart.
type Direction uint8

const (
	// Up is client to server.
	Up Direction = iota
	// Down is server to client.
	Down
)

// String returns "up" or "down", the names rules and logs use.
func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return "invalid"
}

// Opposite returns the other direction.
func (d Direction) Opposite() Direction { return d ^ 1 }
