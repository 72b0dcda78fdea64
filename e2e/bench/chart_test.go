package main

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// sampleRows is a plausible result set: five workloads, four contenders, no nginx in the tcp ones.
func sampleRows() []Row {
	type w struct {
		name, unit string
		direct     float64
	}
	var rows []Row
	for _, w := range []w{
		{"http small keep-alive", "req/s", 98000},
		{"http 64KiB", "req/s", 21000},
		{"http new conn", "req/s", 17500},
		{"tcp bulk", "MB/s", 2900},
		{"tcp conn rate", "conn/s", 12400},
	} {
		for i, c := range []string{"direct", "sluice", "haproxy", "nginx"} {
			if c == "nginx" && w.unit != "req/s" {
				continue
			}
			r := Row{Workload: w.name, Contender: c, Unit: w.unit, Throughput: w.direct * (1 - 0.07*float64(i)),
				P50ms: 0.4 + 0.1*float64(i), P99ms: 1.2 + 0.3*float64(i), P999ms: 3 + float64(i)}
			if c != "direct" {
				r.CPUusPerReq = 9.5 * float64(i+1)
			}
			rows = append(rows, r)
		}
	}
	return rows
}

func TestWriteChart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := WriteChart(path, "sluice vs HAProxy vs nginx — test", sampleRows()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != chartW || b.Dy() != chartH {
		t.Fatalf("size %v, want %dx%d", b.Size(), chartW, chartH)
	}
	colours := map[[4]uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			colours[[4]uint32{r, g, bl, a}]++
		}
	}
	// White, text, gridlines and the four contender colours at least.
	if len(colours) < 7 {
		t.Fatalf("only %d distinct colours; chart looks blank", len(colours))
	}
	for _, c := range chartPalette {
		r, g, bl, a := c.RGBA()
		if colours[[4]uint32{r, g, bl, a}] < 100 {
			t.Errorf("contender colour %v barely present (%d px)", c, colours[[4]uint32{r, g, bl, a}])
		}
	}
}

func TestWriteChartNoRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := WriteChart(path, "empty", nil); err == nil {
		t.Fatal("WriteChart with no rows: want error, got nil")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("WriteChart with no rows left a file behind (stat: %v)", err)
	}
}
