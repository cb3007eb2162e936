package herokutest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The field names and JSON types of the resources the stand-in serves, as
// Heroku's published Platform API schema defines them (the JSON hyper-
// schema behind https://devcenter.heroku.com/articles/platform-api-reference,
// read through its typed rendering in fuma-nama/json-schema-to-typescript's
// realWorld.heroku.ts; app "generation" and release "oci_image" from the
// Fir changelog, https://devcenter.heroku.com/changelog-items/3075).
// Written by us: "a|b" is either type; "object{...}" lists a nested
// object's fields.
var schema = map[string]map[string]string{
	"app": {
		"acm": "boolean", "archived_at": "string|null", "buildpack_provided_description": "string|null",
		"build_stack": "object{id,name}", "created_at": "string", "generation": "object{id,name}",
		"git_url": "string", "id": "string", "internal_routing": "boolean|null", "maintenance": "boolean",
		"name": "string", "owner": "object{email,id}", "organization": "object{id,name}|null",
		"team": "object{id,name}|null", "region": "object{id,name}", "released_at": "string|null",
		"repo_size": "integer|null", "slug_size": "integer|null", "space": "object{id,name,shield}|null",
		"stack": "object{id,name}", "updated_at": "string", "web_url": "string|null",
	},
	"release": {
		"addon_plan_names": "array", "app": "object{id,name}", "created_at": "string", "description": "string",
		"id": "string", "updated_at": "string", "slug": "object{id}|null", "oci_image": "object{id}|null",
		"status": "string", "user": "object{email,id}", "version": "integer", "current": "boolean",
		"output_stream_url": "string|null", "eligible_for_rollback": "boolean",
	},
	"slug": {
		"blob": "object{method,url}", "buildpack_provided_description": "string|null", "checksum": "string|null",
		"commit": "string|null", "commit_description": "string|null", "created_at": "string", "id": "string",
		"process_types": "object", "size": "integer|null", "stack": "object{id,name}", "updated_at": "string",
	},
	"formation": {
		"app": "object{id,name}", "command": "string", "created_at": "string", "id": "string",
		"quantity": "integer", "size": "string", "type": "string", "updated_at": "string",
	},
}

// jsonType names v's JSON type, with an object's fields.
func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		if _, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object{" + strings.Join(slices.Sorted(maps.Keys(x)), ",") + "}"
	}
	return fmt.Sprintf("%T", v)
}

func checkResource(t *testing.T, kind string, v map[string]any) {
	t.Helper()
	fields := schema[kind]
	for k, val := range v {
		want, ok := fields[k]
		if !ok {
			t.Errorf("%s: field %q is not in Heroku's schema", kind, k)
			continue
		}
		got := jsonType(val)
		okType := false
		for _, alt := range strings.Split(want, "|") {
			if alt == got || alt == "object" && strings.HasPrefix(got, "object{") {
				okType = true
			}
		}
		if !okType {
			t.Errorf("%s.%s: %s; the schema says %s", kind, k, got, want)
		}
	}
	for k := range fields {
		if _, ok := v[k]; !ok {
			t.Errorf("%s: field %q of Heroku's schema is missing", kind, k)
		}
	}
}

// fetch GETs path as Heroku's clients do and decodes the body.
func fetch(t *testing.T, s *Server, path, rng string, out any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+path, nil)
	req.Header.Set("Accept", "application/vnd.heroku+json; version=3")
	req.Header.Set("Authorization", "Bearer tok")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	if _, err := strconv.Atoi(resp.Header.Get("RateLimit-Remaining")); err != nil {
		t.Errorf("%s: RateLimit-Remaining %q is not a number", path, resp.Header.Get("RateLimit-Remaining"))
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp
}

// TestResponsesMatchSchema: every resource the stand-in serves has
// exactly the fields of Heroku's schema, of its types; lists page with
// 206, Content-Range and Next-Range; errors are {id, message}; a 429
// carries Retry-After.
func TestResponsesMatchSchema(t *testing.T) {
	s := New("tok")
	defer s.Close()
	s.AddApp(App{Name: "shop", Region: "us", Stack: "heroku-24", ConfigVars: map[string]string{"A": "1"},
		Formation: []Formation{{Type: "web", Command: "x", Quantity: 1}, {Type: "worker", Command: "y", Quantity: 2}}})
	s.Release("shop", Slug{Tgz: MakeSlug(map[string]string{"Procfile": "web: x"}), ProcessTypes: map[string]string{"web": "x"}}, "Deploy")
	s.ReleaseOCI("shop", "Deploy a Fir image")

	var app map[string]any
	fetch(t, s, "/apps/shop", "", &app)
	checkResource(t, "app", app)

	var rels []map[string]any
	resp := fetch(t, s, "/apps/shop/releases", "version ..; order=desc, max=1", &rels)
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Next-Range") != "version ]2..; order=desc, max=1" || resp.Header.Get("Content-Range") != "version 2..2" {
		t.Errorf("first page: %d Next-Range %q Content-Range %q", resp.StatusCode, resp.Header.Get("Next-Range"), resp.Header.Get("Content-Range"))
	}
	if len(rels) != 1 || rels[0]["version"] != json.Number("2") || rels[0]["slug"] != nil || rels[0]["oci_image"] == nil {
		t.Errorf("newest release: %v", rels)
	}
	var rest []map[string]any
	resp = fetch(t, s, "/apps/shop/releases", resp.Header.Get("Next-Range"), &rest)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Next-Range") != "" || len(rest) != 1 || rest[0]["version"] != json.Number("1") {
		t.Errorf("last page: %d %q %v", resp.StatusCode, resp.Header.Get("Next-Range"), rest)
	}
	for _, r := range append(rels, rest...) {
		checkResource(t, "release", r)
	}
	slugID := rest[0]["slug"].(map[string]any)["id"].(string)
	var slug map[string]any
	fetch(t, s, "/apps/shop/slugs/"+slugID, "", &slug)
	checkResource(t, "slug", slug)
	if c, _ := slug["checksum"].(string); !strings.HasPrefix(c, "SHA256:") || len(c) != len("SHA256:")+64 {
		t.Errorf("checksum %q is not SHA256:<64 hex>", c)
	}

	var forms []map[string]any
	fetch(t, s, "/apps/shop/formation", "", &forms)
	if len(forms) != 2 {
		t.Errorf("formation: %v", forms)
	}
	for _, f := range forms {
		checkResource(t, "formation", f)
	}
	var vars map[string]any
	fetch(t, s, "/apps/shop/config-vars", "", &vars)
	if vars["A"] != "1" || len(vars) != 1 {
		t.Errorf("config vars: %v", vars)
	}

	var e map[string]any
	resp = fetch(t, s, "/apps/nope", "", &e)
	if resp.StatusCode != 404 || jsonType(e) != "object{id,message}" || e["id"] != "not_found" {
		t.Errorf("error: %d %v", resp.StatusCode, e)
	}
	s.RateLimit(7)
	resp = fetch(t, s, "/apps/shop", "", &e)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || e["id"] != "rate_limit" {
		t.Errorf("rate limited: %d Retry-After %q %v", resp.StatusCode, resp.Header.Get("Retry-After"), e)
	}
}
