package server

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
)

// Fly's clients send fields Perch does not implement. A field sent empty
// (null, false, 0, "", [], {}) asks for nothing and passes; one with a
// value is refused with a 400 that names it, never accepted and dropped.

// decodeStrict decodes the body into v as decode does, then refuses any
// field v's type does not have that carries a value.
func decodeStrict(r *http.Request, v any) error {
	body, err := decodeBody(r, v)
	if err != nil {
		return err
	}
	return refuseUnknown(body, v)
}

// refuseUnknown refuses a field of body that v's type has no field for
// and that carries a value.
func refuseUnknown(body []byte, v any) error {
	var raw any
	if err := json.Unmarshal(body, &raw); err != nil {
		return errf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
	}
	if path := unknownField("", raw, reflect.TypeOf(v)); path != "" {
		return errf(http.StatusBadRequest, "%s", unsupportedMessage(path))
	}
	return nil
}

// unknownField is the path of the first field of raw with a value that t
// has no field for, or "".
func unknownField(path string, raw any, t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := raw.(map[string]any)
		if !ok {
			return ""
		}
		for key, val := range obj {
			f, ok := fieldByJSONName(t, key)
			sub := joinPath(path, key)
			if !ok {
				if !emptyJSON(val) {
					return sub
				}
				continue
			}
			if p := unknownField(sub, val, f.Type); p != "" {
				return p
			}
		}
	case reflect.Slice, reflect.Array:
		list, ok := raw.([]any)
		if !ok {
			return ""
		}
		for i, val := range list {
			if p := unknownField(path+"["+strconv.Itoa(i)+"]", val, t.Elem()); p != "" {
				return p
			}
		}
	case reflect.Map:
		obj, ok := raw.(map[string]any)
		if !ok {
			return ""
		}
		for key, val := range obj {
			if p := unknownField(path+"["+key+"]", val, t.Elem()); p != "" {
				return p
			}
		}
	}
	return ""
}

func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		if strings.EqualFold(tag, name) { // as encoding/json matches
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// emptyJSON: null, false, 0, "", and lists and objects of only those.
func emptyJSON(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	case []any:
		for _, e := range x {
			if !emptyJSON(e) {
				return false
			}
		}
		return true
	case map[string]any:
		for _, e := range x {
			if !emptyJSON(e) {
				return false
			}
		}
		return true
	}
	return false
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var indexRE = regexp.MustCompile(`\[[^\]]*\]`)

// unsupportedWhy says, for the fields Fly clients commonly send, what
// Perch does instead; keyed by path without list indexes or map keys.
var unsupportedWhy = map[string]string{
	"config.checks":                    "Perch runs checks per service: put them under config.services[].checks",
	"config.schedule":                  "Perch does not run machines on a schedule",
	"config.processes":                 "Perch runs one process per machine: set config.init.cmd",
	"config.containers":                "Perch runs one container per machine",
	"config.standbys":                  "Perch has no standby machines",
	"config.dns":                       "Perch's internal DNS is not configurable per machine",
	"config.metrics":                   "Perch does not scrape machine metrics",
	"config.rootfs":                    "a machine's root filesystem is its image plus a writable layer, kept until it is destroyed",
	"config.guest.gpus":                "Perch has no GPUs",
	"config.guest.gpu_kind":            "Perch has no GPUs",
	"config.guest.kernel_args":         "only microVMs have a kernel, and Perch sets its arguments",
	"config.init.tty":                  "machines run without a terminal",
	"config.init.swap_size_mb":         "machines have no swap",
	"config.services.ports.start_port": "give each public port as its own ports[] entry",
	"config.services.ports.end_port":   "give each public port as its own ports[] entry",
}

func unsupportedMessage(path string) string {
	msg := path + " is not supported by Perch"
	if why := unsupportedWhy[indexRE.ReplaceAllString(path, "")]; why != "" {
		msg += ": " + why
	}
	return msg + "; remove it from the request (docs/api.md lists what Perch supports)"
}
