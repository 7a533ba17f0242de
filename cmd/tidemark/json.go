package main

import (
	"encoding/json"
	"io"
	"reflect"
)

// Every --json output has one shape: an object whose "format" is the
// version of tidemark's JSON output and whose other key names what the
// command printed ("snapshots", "backup", "drill", ...). Keys are
// snake_case; a list is [] when empty, never null. e2e TestJSONKeys pins
// the keys of every command's output: a key renamed, removed or given
// another meaning is a change of jsonFormat; a new key is not (readers
// ignore keys they do not know).

// jsonFormat is the version of the --json outputs.
const jsonFormat = 1

// writeJSON prints v under key, in the one --json shape.
func writeJSON(w io.Writer, key string, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(envelope{format: jsonFormat, key: key, value: emptySlices(v)})
}

// envelope is the output object: format, then the one key.
type envelope struct {
	format int
	key    string
	value  any
}

func (e envelope) MarshalJSON() ([]byte, error) {
	f, err := json.Marshal(e.format)
	if err != nil {
		return nil, err
	}
	k, err := json.Marshal(e.key)
	if err != nil {
		return nil, err
	}
	v, err := json.Marshal(e.value)
	if err != nil {
		return nil, err
	}
	out := append([]byte(`{"format":`), f...)
	out = append(append(append(append(out, ','), k...), ':'), v...)
	return append(out, '}'), nil
}

// emptySlices returns v with every nil slice it holds, through structs,
// pointers, slices and interfaces, replaced by an empty one, so that JSON
// shows [] rather than null. Maps are left as they are.
func emptySlices(v any) any {
	if v == nil {
		return nil
	}
	rv := reflect.ValueOf(v)
	cp := reflect.New(rv.Type()).Elem()
	cp.Set(rv)
	fill(cp, 0)
	return cp.Interface()
}

func fill(v reflect.Value, depth int) {
	if depth > 32 {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() && v.Elem().CanSet() {
			fill(v.Elem(), depth+1)
		}
	case reflect.Interface:
		if !v.IsNil() {
			inner := v.Elem()
			cp := reflect.New(inner.Type()).Elem()
			cp.Set(inner)
			fill(cp, depth+1)
			if v.CanSet() {
				v.Set(cp)
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				fill(f, depth+1)
			}
		}
	case reflect.Slice:
		if v.IsNil() {
			if v.CanSet() && v.Type().Elem().Kind() != reflect.Uint8 {
				v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			}
			return
		}
		for i := range v.Len() {
			fill(v.Index(i), depth+1)
		}
	}
}
