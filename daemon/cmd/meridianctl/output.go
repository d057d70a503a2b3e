package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Output formats every command takes with -o.
const (
	formatTable = "table"
	formatWide  = "wide"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var formats = []string{formatTable, formatWide, formatJSON, formatYAML}

func checkFormat(f string) error {
	for _, ok := range formats {
		if f == ok {
			return nil
		}
	}
	return fmt.Errorf("unknown output format %q (want %s)", f, strings.Join(formats, ", "))
}

func structured(format string) bool { return format == formatJSON || format == formatYAML }

// printProtos writes the rows as one JSON array in the proto's JSON mapping
// (lowerCamelCase names, enums by name), indented the same way every run:
// protojson deliberately varies its own whitespace. YAML is the same
// document converted, so both formats name fields alike.
func printProtos[T proto.Message](w io.Writer, format string, rows []T) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, r := range rows {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := protojson.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	return writeJSONDoc(w, format, buf.Bytes())
}

// printValue writes a Go value (the reports trace and doctor build) as
// JSON or YAML.
func printValue(w io.Writer, format string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	return writeJSONDoc(w, format, b)
}

func writeJSONDoc(w io.Writer, format string, doc []byte) error {
	var out bytes.Buffer
	if format == formatYAML {
		y, err := yaml.JSONToYAML(doc)
		if err != nil {
			return fmt.Errorf("encode YAML: %w", err)
		}
		out.Write(y)
	} else {
		if err := json.Indent(&out, doc, "", "  "); err != nil {
			return fmt.Errorf("indent JSON: %w", err)
		}
		out.WriteByte('\n')
	}
	_, err := out.WriteTo(w)
	return err
}

// table aligns columns like kubectl and drops the padding tabwriter leaves
// after the last non-empty cell, so lines end with text.
type table struct {
	*tabwriter.Writer
	buf bytes.Buffer
	out io.Writer
}

func newTable(out io.Writer) *table {
	t := &table{out: out}
	t.Writer = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

// row writes one line of cells.
func (t *table) row(cells ...string) {
	fmt.Fprintln(t.Writer, strings.Join(cells, "\t"))
}

func (t *table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for line := range strings.Lines(t.buf.String()) {
		b.WriteString(strings.TrimRight(line, " \n"))
		b.WriteByte('\n')
	}
	_, err := io.WriteString(t.out, b.String())
	return err
}

// orDash shows an empty cell as "-" so columns stay readable.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
