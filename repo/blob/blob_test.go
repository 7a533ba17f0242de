package blob

import (
	"encoding/json"
	"testing"
)

func TestIDs(t *testing.T) {
	h := NewHasher([KeySize]byte{1})
	a := h.Sum(KindFile, []byte("x"))
	if a == h.Sum(KindTree, []byte("x")) || a == NewHasher([KeySize]byte{2}).Sum(KindFile, []byte("x")) {
		t.Fatal("kind and key must both change the ID")
	}
	b, _ := json.Marshal(a)
	var back ID
	if err := json.Unmarshal(b, &back); err != nil || back != a {
		t.Fatalf("JSON roundtrip: %v", err)
	}
	if _, err := ParseID("zz"); err == nil {
		t.Fatal("bad id parsed")
	}
	if !IsZeroSlot(KindSlot, make([]byte, SlotSize)) || IsZeroSlot(KindFile, make([]byte, SlotSize)) ||
		IsZeroSlot(KindSlot, make([]byte, SlotSize-1)) {
		t.Fatal("zero slot detection")
	}
	nz := make([]byte, SlotSize)
	nz[SlotSize-1] = 1
	if IsZeroSlot(KindSlot, nz) {
		t.Fatal("non-zero slot taken for zero")
	}
	if KindSlot.Class() != ClassData || KindTree.Class() != ClassMeta || ClassMeta.Prefix() != "meta" {
		t.Fatal("classes")
	}
}
