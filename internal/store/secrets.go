package store

import "time"

// AppSecrets is an app's key in perch_secrets, written only by the control
// plane: the app's data key wrapped by the master key named KeyID, and
// each value sealed by the data key. No value is stored in the clear.
type AppSecrets struct {
	App            string         `json:"app"`
	KeyID          string         `json:"key_id"`
	WrappedDataKey []byte         `json:"wrapped_data_key"`
	Version        int64          `json:"version"`
	Secrets        []SecretRecord `json:"secrets"`
	UpdatedAt      time.Time      `json:"updated_at"`
}

// SecretRecord is one secret: its value sealed (secrets.Seal under the
// data key, bound to app and name) and its digest.
type SecretRecord struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	Sealed    []byte    `json:"sealed"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SealedSecrets is what MachineSpec.Secrets holds once opened: the app's
// secrets by name.
type SealedSecrets struct {
	Values map[string]string `json:"values"`
}
