package sm

import (
	"bufio"
	"io"
	"strings"
)

// WriteDOT renders the machine as a Graphviz digraph. States are boxes
// labelled with their grammar elements; fail and finish are the terminal
// pseudo-states; a point marks the initial state. An edge is a transition
// with a jump, labelled with its events and "[when]" if it is guarded (its
// Label in the brackets when it has one); a dotted loop is a transition
// that only executes. The defaults are drawn from a dashed "any" node,
// since they apply to every state. The output depends only on the
// definition, in declaration order.
func (m *Machine[C, U, P]) WriteDOT(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(parts ...string) {
		for _, s := range parts {
			bw.WriteString(s)
		}
	}
	p("digraph ", dotQuote(m.name), " {\n")
	p("\trankdir=LR;\n")
	p("\tnode [shape=box, style=rounded];\n")
	p("\t\"\" [shape=point];\n")
	p("\t\"\" -> ", dotQuote(m.states[m.initial].name), ";\n")
	for i := range m.states {
		st := &m.states[i]
		label := st.name
		for dir, el := range st.elem {
			if el != nil {
				label += "\n" + Direction(dir).String() + ": " + el.Name
			}
		}
		p("\t", dotQuote(st.name), " [label=", dotQuote(label), "];\n")
	}
	p("\t", dotQuote(Fail), " [shape=doubleoctagon];\n")
	p("\t", dotQuote(Finish), " [shape=doublecircle];\n")
	if len(m.any) > 0 {
		p("\t", dotQuote(anyName), " [shape=note, style=dashed];\n")
	}
	edges := func(from string, ts []*transition[C, U, P], style string) {
		for _, t := range ts {
			names := make([]string, len(t.events))
			for i, id := range t.events {
				names[i] = m.events[id].Name
			}
			label := strings.Join(names, ", ")
			switch {
			case t.label != "":
				label += " [" + t.label + "]"
			case t.when != nil:
				label += " [when]"
			}
			to, attrs := t.jumpName, style
			if t.jump == jumpNone {
				to, attrs = from, "style=dotted"
			}
			p("\t", dotQuote(from), " -> ", dotQuote(to), " [label=", dotQuote(label))
			if attrs != "" {
				p(", ", attrs)
			}
			p("];\n")
		}
	}
	for i := range m.states {
		edges(m.states[i].name, m.states[i].own, "")
	}
	edges(anyName, m.any, "style=dashed")
	p("}\n")
	return bw.Flush()
}

// dotQuote makes s a DOT quoted string; a newline becomes the \n escape
// that Graphviz renders as a line break.
func dotQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
