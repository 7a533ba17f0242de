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
	// Hashers are reused: the same input gives the same ID every time,
	// and the ID of the old code (a new keyed hasher per blob).
	big := make([]byte, SlotSize+5)
	for range 3 {
		if got := h.Sum(KindSlot, big).String(); got != "e9a0d38360d03cb1065aafd439a0b112e7539b5895ba1da42f82f5a127c3c476" {
			t.Fatalf("ID of a known input: %s", got)
		}
		h.Sum(KindFile, []byte("y"))
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
