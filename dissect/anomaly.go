package dissect

// Anomaly is a named protocol anomaly found in one direction of a
// connection. Name is stable (rules match on it); Detail is for humans.
type Anomaly struct {
	Name      string
	Direction Direction
	Detail    string
}

func (a Anomaly) String() string {
	if a.Detail == "" {
		return a.Direction.String() + ": " + a.Name
	}
	return a.Direction.String() + ": " + a.Name + ": " + a.Detail
}
