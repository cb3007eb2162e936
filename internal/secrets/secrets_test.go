package secrets

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealBindsAppAndName(t *testing.T) {
	k := NewKey()
	box, err := Seal(k, ValueAAD("shop", "DB"), []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(k, ValueAAD("shop", "DB"), box); err != nil || string(got) != "v" {
		t.Fatalf("open: %q %v", got, err)
	}
	for _, aad := range []string{ValueAAD("shop", "OTHER"), ValueAAD("blog", "DB")} {
		if _, err := Open(k, aad, box); !errors.Is(err, ErrDecrypt) {
			t.Errorf("a box moved to %s opened: %v", aad, err)
		}
	}
	if _, err := Open(NewKey(), ValueAAD("shop", "DB"), box); !errors.Is(err, ErrDecrypt) {
		t.Errorf("another key opened the box: %v", err)
	}
	long := []byte("a-longer-plaintext-value")
	if box, _ := Seal(k, "x", long); bytes.Contains(box, long) {
		t.Error("the box holds the plaintext")
	}
}

func TestValidate(t *testing.T) {
	for _, ok := range []string{"A", "_x", "DATABASE_URL", "a1"} {
		if err := Validate(ok, []byte("v")); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1A", "A-B", "A B", "É", "FLY_X", "Perch_x", strings.Repeat("A", 257)} {
		if err := Validate(bad, []byte("v")); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := Validate("A", make([]byte, MaxValueBytes)); err != nil {
		t.Errorf("64 KiB refused: %v", err)
	}
	if err := Validate("A", make([]byte, MaxValueBytes+1)); !errors.Is(err, ErrInvalid) {
		t.Error("64 KiB + 1 accepted")
	}
}

func TestKeyringRotation(t *testing.T) {
	dir := t.TempDir()
	k, err := LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	again, _ := LoadKeyring(dir)
	if again.Current.ID != k.Current.ID || !bytes.Equal(again.Current.Key, k.Current.Key) {
		t.Fatal("a second start made another key")
	}
	old := k.Current
	if err := k.BeginRotation(); err != nil {
		t.Fatal(err)
	}
	// Interrupted here: a new start holds both keys.
	mid, _ := LoadKeyring(dir)
	if mid.Next == nil || mid.Wrapping().ID == old.ID {
		t.Fatal("an interrupted rotation's new key is lost")
	}
	if _, ok := mid.Get(old.ID); !ok {
		t.Fatal("the old key is gone before the rotation finished")
	}
	if err := k.FinishRotation(); err != nil {
		t.Fatal(err)
	}
	after, _ := LoadKeyring(dir)
	if after.Next != nil || after.Current.ID == old.ID {
		t.Fatalf("after rotation: current %s, next %v", after.Current.ID, after.Next)
	}
}
