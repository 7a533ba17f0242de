package drill

import (
	"fmt"
	"strings"
)

// ParseChecks splits a file of SQL checks into statements: separated by
// semicolons outside quotes ('...', "..."), dollar quotes ($tag$...$tag$)
// and comments (-- and /* */). Each is named file:line of its first line.
func ParseChecks(file string, sql string) ([]Check, error) {
	var out []Check
	var cur strings.Builder
	line, startLine := 1, 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		if s != "" && !onlyComments(s) {
			out = append(out, Check{Name: fmt.Sprintf("%s:%d", file, startLine), SQL: s})
		}
		cur.Reset()
		startLine = 0
	}
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		if startLine == 0 && !isSpace(c) {
			startLine = line
		}
		switch {
		case c == '\n':
			line++
			cur.WriteByte(c)
		case c == ';':
			flush()
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				end = len(sql) - i
			}
			cur.WriteString(sql[i : i+end])
			i += end - 1
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: unterminated /* comment", file, line)
			}
			chunk := sql[i : i+2+end+2]
			line += strings.Count(chunk, "\n")
			cur.WriteString(chunk)
			i += len(chunk) - 1
		case c == '\'' || c == '"':
			end := i + 1
			for end < len(sql) {
				if sql[end] == c {
					if end+1 < len(sql) && sql[end+1] == c { // doubled quote
						end += 2
						continue
					}
					break
				}
				end++
			}
			if end >= len(sql) {
				return nil, fmt.Errorf("%s:%d: unterminated %c quote", file, line, c)
			}
			chunk := sql[i : end+1]
			line += strings.Count(chunk, "\n")
			cur.WriteString(chunk)
			i = end
		case c == '$':
			tagEnd := strings.IndexByte(sql[i+1:], '$')
			tag := ""
			if tagEnd >= 0 {
				tag = sql[i : i+1+tagEnd+1]
			}
			if tagEnd < 0 || !validTag(tag[1:len(tag)-1]) {
				cur.WriteByte(c)
				continue
			}
			end := strings.Index(sql[i+len(tag):], tag)
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: unterminated %s quote", file, line, tag)
			}
			chunk := sql[i : i+len(tag)+end+len(tag)]
			line += strings.Count(chunk, "\n")
			cur.WriteString(chunk)
			i += len(chunk) - 1
		default:
			cur.WriteByte(c)
		}
	}
	flush()
	return out, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// validTag reports whether s can be a dollar-quote tag ("" included); a $
// followed by digits is a parameter, not a quote.
func validTag(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func onlyComments(s string) bool {
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t\r\n\f\v")
		switch {
		case s == "":
		case strings.HasPrefix(s, "--"):
			end := strings.IndexByte(s, '\n')
			if end < 0 {
				return true
			}
			s = s[end+1:]
		case strings.HasPrefix(s, "/*"):
			end := strings.Index(s[2:], "*/")
			if end < 0 {
				return true
			}
			s = s[2+end+2:]
		default:
			return false
		}
	}
	return true
}
