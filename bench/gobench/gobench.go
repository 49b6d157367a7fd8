// Package gobench parses the text output of `go test -bench` into
// figures: one Result per benchmark line, with every reported metric
// (ns/op, B/op, allocs/op and custom ones such as ns/connect).
package gobench

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Result is one benchmark line.
type Result struct {
	// Package is the import path from the preceding "pkg:" line.
	Package string `json:"package"`
	// Name is the benchmark name without the -GOMAXPROCS suffix.
	Name string `json:"name"`
	// N is the iteration count.
	N int64 `json:"n"`
	// Metrics maps unit ("ns/op", "allocs/op", ...) to value.
	Metrics map[string]float64 `json:"metrics"`
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// Parse reads `go test -bench` output and returns its benchmark lines in
// order. Lines that are not benchmark results are ignored; a benchmark
// line whose figures do not parse is skipped.
func Parse(r io.Reader) ([]Result, error) {
	var out []Result
	pkg := ""
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		res := Result{Package: pkg, Name: procsSuffix.ReplaceAllString(f[0], ""), N: n, Metrics: map[string]float64{}}
		ok := true
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				ok = false
				break
			}
			res.Metrics[f[i+1]] = v
		}
		if ok {
			out = append(out, res)
		}
	}
	return out, s.Err()
}
