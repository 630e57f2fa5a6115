package deploy_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// stage is one FROM section of a Dockerfile.
type stage struct {
	name  string
	lines []string // instructions, continuation lines joined
}

func readDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		ins := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		if m := regexp.MustCompile(`^FROM \S+(?: AS (\S+))?$`).FindStringSubmatch(ins); m != nil {
			stages = append(stages, stage{name: m[1]})
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, ins)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// TestDockerfiles checks what a build would find out only on a machine with
// a container engine: every file a COPY takes from the build context exists
// and is not left out by .dockerignore, every script a RUN starts is in the
// image by then and executable, and every image ends as a numeric user.
func TestDockerfiles(t *testing.T) {
	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	ignored := func(p string) bool {
		for _, pat := range strings.Fields(string(ignore)) {
			anyDepth := strings.HasPrefix(pat, "**/")
			pat = strings.TrimPrefix(pat, "**/")
			for q := filepath.Clean(p); q != "." && q != "/"; q = filepath.Dir(q) {
				if ok, _ := filepath.Match(pat, q); ok {
					return true
				}
				if ok, _ := filepath.Match(pat, filepath.Base(q)); ok && anyDepth {
					return true
				}
			}
		}
		return false
	}
	for _, file := range []string{"../Dockerfile", "../worker/Dockerfile"} {
		stages := readDockerfile(t, file)
		if len(stages) < 2 {
			t.Fatalf("%s: %d stages", file, len(stages))
		}
		for _, st := range stages {
			var copied []string
			user := ""
			for _, ins := range st.lines {
				fields := strings.Fields(ins)
				switch fields[0] {
				case "COPY":
					if strings.HasPrefix(fields[1], "--from=") {
						continue
					}
					for _, src := range fields[1 : len(fields)-1] {
						if _, err := os.Stat(filepath.Join("..", src)); err != nil {
							t.Errorf("%s (%s): COPY %s: %v", file, st.name, src, err)
						}
						// COPY keeps the mode bits: a script that is not
						// executable here fails its RUN there.
						if info, err := os.Stat(filepath.Join("..", src)); err == nil && strings.HasSuffix(src, ".sh") && info.Mode()&0o111 == 0 {
							t.Errorf("%s (%s): %s is not executable", file, st.name, src)
						}
						if ignored(src) {
							t.Errorf("%s (%s): COPY %s, which .dockerignore leaves out", file, st.name, src)
						}
						copied = append(copied, src)
					}
				case "RUN":
					for _, script := range regexp.MustCompile(`(?:^|\s)(?:\S*/)?(deploy/docker/[a-z-]+\.sh)`).FindAllStringSubmatch(ins, -1) {
						info, err := os.Stat(filepath.Join("..", script[1]))
						switch {
						case err != nil:
							t.Errorf("%s (%s): RUN %s: %v", file, st.name, script[1], err)
						case info.Mode()&0o111 == 0:
							t.Errorf("%s (%s): %s is not executable", file, st.name, script[1])
						}
						found := false
						for _, c := range copied {
							found = found || c == script[1] || strings.HasPrefix(script[1], strings.TrimSuffix(c, "/")+"/")
						}
						if !found {
							t.Errorf("%s (%s): RUN %s before a COPY brings it in", file, st.name, script[1])
						}
					}
				case "USER":
					user = fields[1]
				}
			}
			final := st.name == "" || st.name == "sidecar" || st.name == "gpu"
			if final && !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user) {
				t.Errorf("%s (%s): USER %q, want a numeric user and group (runAsNonRoot checks numbers)", file, st.name, user)
			}
		}
	}
}
