package e2e

import (
	"encoding/json"
	"fmt"
)

// fromJSON decodes the value under key of a --json output, after checking
// its one shape: an object with "format" 1 and that key.
func fromJSON(out, key string, v any) error {
	var env map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		return err
	}
	if f := string(env["format"]); f != "1" {
		return fmt.Errorf("--json output has format %q, want 1", f)
	}
	raw, ok := env[key]
	if !ok || len(env) != 2 {
		return fmt.Errorf("--json output has keys %v, want format and %s", keysOf(env), key)
	}
	return json.Unmarshal(raw, v)
}

func keysOf(m map[string]json.RawMessage) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
