package server

import (
	"net/http"
	"strings"
)

func (s *Server) routes() http.Handler {
	v1 := http.NewServeMux()
	v1.HandleFunc("POST /v1/apps", s.createApp)
	v1.HandleFunc("GET /v1/apps", s.listApps)
	v1.HandleFunc("GET /v1/apps/{app}", s.getApp)
	v1.HandleFunc("DELETE /v1/apps/{app}", s.deleteApp)
	v1.HandleFunc("GET /v1/apps/{app}/machines", s.listMachines)
	v1.HandleFunc("POST /v1/apps/{app}/machines", s.createMachine)
	v1.HandleFunc("GET /v1/apps/{app}/machines/{id}", s.getMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}", s.updateMachine)
	v1.HandleFunc("DELETE /v1/apps/{app}/machines/{id}", s.deleteMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/start", s.startMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/stop", s.stopMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/suspend", s.suspendMachine)
	v1.HandleFunc("GET /v1/apps/{app}/machines/{id}/wait", s.waitMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/cordon", s.cordonMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/uncordon", s.uncordonMachine)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/restart", s.restartMachine) // flyapi.go
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/signal", s.signalMachine)
	v1.HandleFunc("GET /v1/apps/{app}/machines/{id}/events", s.listEvents)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/lease", s.acquireLease)
	v1.HandleFunc("GET /v1/apps/{app}/machines/{id}/lease", s.getLease)
	v1.HandleFunc("DELETE /v1/apps/{app}/machines/{id}/lease", s.releaseLease)
	v1.HandleFunc("GET /v1/apps/{app}/machines/{id}/metadata", s.getMetadata)
	v1.HandleFunc("POST /v1/apps/{app}/machines/{id}/metadata/{key}", s.setMetadata)
	v1.HandleFunc("DELETE /v1/apps/{app}/machines/{id}/metadata/{key}", s.deleteMetadata)
	v1.HandleFunc("GET /v1/apps/{app}/logs", s.logs)
	v1.HandleFunc("GET /v1/apps/{app}/releases", s.listReleases)
	v1.HandleFunc("POST /v1/apps/{app}/releases", s.createRelease)
	v1.HandleFunc("GET /v1/apps/{app}/releases/{version}", s.getRelease)
	v1.HandleFunc("PATCH /v1/apps/{app}/releases/{version}", s.updateRelease)
	v1.HandleFunc("POST /v1/apps/{app}/certificates", s.addCertificate)
	v1.HandleFunc("GET /v1/apps/{app}/certificates", s.listCertificates)
	v1.HandleFunc("GET /v1/apps/{app}/certificates/{host}", s.getCertificate)
	v1.HandleFunc("DELETE /v1/apps/{app}/certificates/{host}", s.removeCertificate)
	v1.HandleFunc("GET /v1/apps/{app}/autoscale", s.getAutoscale) // autoscale.go
	v1.HandleFunc("PUT /v1/apps/{app}/autoscale", s.putAutoscale)
	v1.HandleFunc("DELETE /v1/apps/{app}/autoscale", s.deleteAutoscale)
	v1.HandleFunc("GET /v1/apps/{app}/usage", s.appUsage) // billing.go
	v1.HandleFunc("GET /v1/orgs/{org}/usage", s.orgUsage)
	v1.HandleFunc("GET /v1/apps/{app}/budget", s.getBudget)
	v1.HandleFunc("PUT /v1/apps/{app}/budget", s.putBudget)
	v1.HandleFunc("DELETE /v1/apps/{app}/budget", s.deleteBudget)
	v1.HandleFunc("POST /v1/apps/{app}/budget/resume", s.resumeBudget)
	v1.HandleFunc("GET /v1/orgs/{org}/budget", s.getBudget)
	v1.HandleFunc("PUT /v1/orgs/{org}/budget", s.putBudget)
	v1.HandleFunc("DELETE /v1/orgs/{org}/budget", s.deleteBudget)
	v1.HandleFunc("POST /v1/orgs/{org}/budget/resume", s.resumeBudget)
	v1.HandleFunc("GET /v1/apps/{app}/secrets", s.listSecrets) // secrets.go
	v1.HandleFunc("POST /v1/apps/{app}/secrets", s.updateSecrets)
	v1.HandleFunc("POST /v1/apps/{app}/secrets/{name}", s.setSecret)
	v1.HandleFunc("DELETE /v1/apps/{app}/secrets/{name}", s.unsetSecret)
	// Volumes (volumes.go, docs/volumes.md): Fly's volumes resource.
	v1.HandleFunc("GET /v1/apps/{app}/volumes", s.listVolumes)
	v1.HandleFunc("POST /v1/apps/{app}/volumes", s.createVolume)
	v1.HandleFunc("GET /v1/apps/{app}/volumes/{id}", s.getVolume)
	v1.HandleFunc("DELETE /v1/apps/{app}/volumes/{id}", s.deleteVolume)
	v1.HandleFunc("PUT /v1/apps/{app}/volumes/{id}/extend", s.extendVolume)
	v1.HandleFunc("GET /v1/apps/{app}/volumes/{id}/snapshots", s.listSnapshots)
	v1.HandleFunc("POST /v1/apps/{app}/volumes/{id}/snapshots", s.createSnapshot)
	v1.HandleFunc("GET /v1/hosts", s.listHosts)
	v1.HandleFunc("POST /v1/hosts", s.registerHost)
	v1.HandleFunc("GET /v1/agent/bootstrap", s.bootstrap)
	v1.HandleFunc("GET /v1/regions", s.listRegions)
	v1.HandleFunc("GET /v1/platform/regions", s.listRegions) // Fly's path
	v1.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})

	mux := http.NewServeMux()
	mux.Handle("/v1/", s.requireToken(v1))
	mux.Handle("/v2/", s.reg)
	mux.Handle("GET /metrics", s.requireToken(s.autoscaler.Metrics().Handler()))
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
