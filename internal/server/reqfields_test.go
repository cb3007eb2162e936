package server

import (
	"encoding/json"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// FuzzRefuseUnknown: any JSON a client sends is either refused with a
// message or accepted, never a panic; what is accepted decodes.
func FuzzRefuseUnknown(f *testing.F) {
	for _, s := range []string{
		`{"config":{"image":"i","mounts":[{"path":"/data"}]}}`,
		`{"config":{"image":"i","services":[{"internal_port":80,"ports":[{"port":80,"start_port":1}]}]}}`,
		`{"config":{"image":"i","checks":{"a":{"type":"tcp"}},"metadata":{"k":"v"}}}`,
		`{"skip_secrets":false,"config":{"init":{},"files":null}}`,
		`{"config":{"services":[{"checks":[{"headers":[{"name":"a","values":["b"]}]}]}]}}`,
		`[1,2]`, `"x"`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.CreateMachineRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		if err := refuseUnknown(body, &req); err != nil && err.Error() == "" {
			t.Errorf("refused %q without a message", body)
		}
	})
}
