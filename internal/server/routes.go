package server

import (
	"net/http"
	"strings"
)

// scope is who may call a route (auth.go's authorize).
type scope int

const (
	// scopeAdmin: the operator's admin token only.
	scopeAdmin scope = iota
	// scopeAgent: the admin token or a host's credential (the agent).
	scopeAgent
	// scopeAny: any valid token (regions, whoami).
	scopeAny
	// scopeApps: the app collection; the handler keeps an organisation
	// token to its own organisation's apps.
	scopeApps
	// scopeApp: routes of {app}: the app must be in the token's
	// organisation and allowed by its app caveats; machine writes by its
	// region caveats.
	scopeApp
	// scopeOrg: routes of {org}: the token's own organisation, with no app
	// caveat.
	scopeOrg
	// scopeOrgAdmin: managing {org}'s members and tokens: its token with
	// no app, region or readonly caveat.
	scopeOrgAdmin
	// scopeOrgList: the organisation collection; the handler shows a
	// token its own organisation.
	scopeOrgList
)

// route is one API route. routes() registers every entry of apiRoutes and
// nothing else under /v1/, so the token test reads the router's routes
// from this table.
type route struct {
	pattern string
	scope   scope
	handler func(*Server) http.HandlerFunc
}

func h(f func(*Server, http.ResponseWriter, *http.Request)) func(*Server) http.HandlerFunc {
	return func(s *Server) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { f(s, w, r) }
	}
}

var apiRoutes = []route{
	{"POST /v1/apps", scopeApps, h((*Server).createApp)},
	{"GET /v1/apps", scopeApps, h((*Server).listApps)},
	{"GET /v1/apps/{app}", scopeApp, h((*Server).getApp)},
	{"DELETE /v1/apps/{app}", scopeApp, h((*Server).deleteApp)},
	{"GET /v1/apps/{app}/machines", scopeApp, h((*Server).listMachines)},
	{"POST /v1/apps/{app}/machines", scopeApp, h((*Server).createMachine)},
	{"GET /v1/apps/{app}/machines/{id}", scopeApp, h((*Server).getMachine)},
	{"POST /v1/apps/{app}/machines/{id}", scopeApp, h((*Server).updateMachine)},
	{"DELETE /v1/apps/{app}/machines/{id}", scopeApp, h((*Server).deleteMachine)},
	{"POST /v1/apps/{app}/machines/{id}/start", scopeApp, h((*Server).startMachine)},
	{"POST /v1/apps/{app}/machines/{id}/stop", scopeApp, h((*Server).stopMachine)},
	{"POST /v1/apps/{app}/machines/{id}/suspend", scopeApp, h((*Server).suspendMachine)},
	{"GET /v1/apps/{app}/machines/{id}/wait", scopeApp, h((*Server).waitMachine)},
	{"POST /v1/apps/{app}/machines/{id}/cordon", scopeApp, h((*Server).cordonMachine)},
	{"POST /v1/apps/{app}/machines/{id}/uncordon", scopeApp, h((*Server).uncordonMachine)},
	{"POST /v1/apps/{app}/machines/{id}/restart", scopeApp, h((*Server).restartMachine)}, // flyapi.go
	{"POST /v1/apps/{app}/machines/{id}/signal", scopeApp, h((*Server).signalMachine)},
	{"GET /v1/apps/{app}/machines/{id}/events", scopeApp, h((*Server).listEvents)},
	{"POST /v1/apps/{app}/machines/{id}/lease", scopeApp, h((*Server).acquireLease)},
	{"GET /v1/apps/{app}/machines/{id}/lease", scopeApp, h((*Server).getLease)},
	{"DELETE /v1/apps/{app}/machines/{id}/lease", scopeApp, h((*Server).releaseLease)},
	{"GET /v1/apps/{app}/machines/{id}/metadata", scopeApp, h((*Server).getMetadata)},
	{"POST /v1/apps/{app}/machines/{id}/metadata/{key}", scopeApp, h((*Server).setMetadata)},
	{"DELETE /v1/apps/{app}/machines/{id}/metadata/{key}", scopeApp, h((*Server).deleteMetadata)},
	{"GET /v1/apps/{app}/logs", scopeApp, h((*Server).logs)},
	{"GET /v1/apps/{app}/releases", scopeApp, h((*Server).listReleases)},
	{"POST /v1/apps/{app}/releases", scopeApp, h((*Server).createRelease)},
	{"GET /v1/apps/{app}/releases/{version}", scopeApp, h((*Server).getRelease)},
	{"PATCH /v1/apps/{app}/releases/{version}", scopeApp, h((*Server).updateRelease)},
	{"POST /v1/apps/{app}/certificates", scopeApp, h((*Server).addCertificate)},
	{"GET /v1/apps/{app}/certificates", scopeApp, h((*Server).listCertificates)},
	{"GET /v1/apps/{app}/certificates/{host}", scopeApp, h((*Server).getCertificate)},
	{"DELETE /v1/apps/{app}/certificates/{host}", scopeApp, h((*Server).removeCertificate)},
	{"GET /v1/apps/{app}/autoscale", scopeApp, h((*Server).getAutoscale)}, // autoscale.go
	{"PUT /v1/apps/{app}/autoscale", scopeApp, h((*Server).putAutoscale)},
	{"DELETE /v1/apps/{app}/autoscale", scopeApp, h((*Server).deleteAutoscale)},
	{"GET /v1/apps/{app}/usage", scopeApp, h((*Server).appUsage)}, // billing.go
	{"GET /v1/orgs/{org}/usage", scopeOrg, h((*Server).orgUsage)},
	{"GET /v1/apps/{app}/budget", scopeApp, h((*Server).getBudget)},
	{"PUT /v1/apps/{app}/budget", scopeApp, h((*Server).putBudget)},
	{"DELETE /v1/apps/{app}/budget", scopeApp, h((*Server).deleteBudget)},
	{"POST /v1/apps/{app}/budget/resume", scopeApp, h((*Server).resumeBudget)},
	{"GET /v1/orgs/{org}/budget", scopeOrg, h((*Server).getBudget)},
	{"PUT /v1/orgs/{org}/budget", scopeOrg, h((*Server).putBudget)},
	{"DELETE /v1/orgs/{org}/budget", scopeOrg, h((*Server).deleteBudget)},
	{"POST /v1/orgs/{org}/budget/resume", scopeOrg, h((*Server).resumeBudget)},
	{"GET /v1/apps/{app}/secrets", scopeApp, h((*Server).listSecrets)}, // secrets.go
	{"POST /v1/apps/{app}/secrets", scopeApp, h((*Server).updateSecrets)},
	{"POST /v1/apps/{app}/secrets/{name}", scopeApp, h((*Server).setSecret)},
	{"DELETE /v1/apps/{app}/secrets/{name}", scopeApp, h((*Server).unsetSecret)},
	{"GET /v1/apps/{app}/volumes", scopeApp, h((*Server).listVolumes)}, // volumes.go
	{"POST /v1/apps/{app}/volumes", scopeApp, h((*Server).createVolume)},
	{"GET /v1/apps/{app}/volumes/{id}", scopeApp, h((*Server).getVolume)},
	{"DELETE /v1/apps/{app}/volumes/{id}", scopeApp, h((*Server).deleteVolume)},
	{"PUT /v1/apps/{app}/volumes/{id}/extend", scopeApp, h((*Server).extendVolume)},
	{"GET /v1/apps/{app}/volumes/{id}/snapshots", scopeApp, h((*Server).listSnapshots)},
	{"POST /v1/apps/{app}/volumes/{id}/snapshots", scopeApp, h((*Server).createSnapshot)},
	{"GET /v1/apps/{app}/ip_assignments", scopeApp, h((*Server).listIPs)}, // ips.go
	{"POST /v1/apps/{app}/ip_assignments", scopeApp, h((*Server).assignIP)},
	{"DELETE /v1/apps/{app}/ip_assignments/{ip}", scopeApp, h((*Server).releaseIP)},
	{"GET /v1/orgs", scopeOrgList, h((*Server).listOrgs)}, // orgs.go
	{"POST /v1/orgs", scopeAdmin, h((*Server).createOrg)},
	{"GET /v1/orgs/{org}", scopeOrg, h((*Server).getOrg)},
	{"POST /v1/orgs/{org}/members", scopeOrgAdmin, h((*Server).inviteMember)},
	{"DELETE /v1/orgs/{org}/members/{member}", scopeOrgAdmin, h((*Server).removeMember)},
	{"GET /v1/orgs/{org}/tokens", scopeOrg, h((*Server).listTokens)},
	{"POST /v1/orgs/{org}/tokens", scopeOrgAdmin, h((*Server).createToken)},
	{"DELETE /v1/orgs/{org}/tokens/{id}", scopeOrgAdmin, h((*Server).revokeToken)},
	{"GET /v1/whoami", scopeAny, h((*Server).whoami)},
	{"GET /v1/hosts", scopeAdmin, h((*Server).listHosts)},
	{"POST /v1/hosts", scopeAgent, h((*Server).registerHost)},
	{"POST /v1/hosts/{id}/heartbeat", scopeAgent, h((*Server).hostHeartbeat)},
	{"POST /v1/hosts/join-tokens", scopeAdmin, h((*Server).createJoinToken)}, // hostauth.go
	{"DELETE /v1/hosts/{id}", scopeAdmin, h((*Server).removeHost)},
	{"GET /v1/cluster", scopeAdmin, h((*Server).clusterStatus)},                  // clusterstatus.go
	{"DELETE /v1/cluster/servers/{name}", scopeAdmin, h((*Server).removeServer)}, // clusterremove.go
	{"GET /v1/agent/bootstrap", scopeAgent, h((*Server).bootstrap)},
	{"GET /v1/regions", scopeAny, h((*Server).listRegions)},
	{"GET /v1/platform/regions", scopeAny, h((*Server).listRegions)},          // Fly's path
	{"POST /v1/regions/{region}/drain", scopeAdmin, h((*Server).drainRegion)}, // ips.go
	{"POST /v1/regions/{region}/undrain", scopeAdmin, h((*Server).undrainRegion)},
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range apiRoutes {
		mux.Handle(rt.pattern, s.guard(rt.scope, rt.handler(s)))
	}
	// Authenticated by the join token it spends alone (hostauth.go).
	mux.HandleFunc("POST /v1/hosts/join", s.joinHost)
	// Unknown /v1/ paths: a valid token learns the path does not exist;
	// no token learns nothing.
	mux.Handle("/v1/", s.guard(scopeAny, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})))
	mux.Handle("/v2/", s.reg)
	mux.Handle("GET /metrics", s.guard(scopeAdmin, s.autoscaler.Metrics().Handler()))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2") {
			s.reg.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path+" (the API is under /v1/, the registry under /v2/)")
	})
	return s.limitBodies(mux)
}
