// Package osuser names the operating-system user that files a restore or a
// drill writes belong to: PostgreSQL refuses a data directory it does not
// own, and refuses to run as root.
package osuser

import (
	"fmt"
	"os/user"
	"strconv"
)

// Owner is a uid and gid to give files.
type Owner struct{ UID, GID int }

// Lookup finds a user by name or numeric id.
func Lookup(name string) (*Owner, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("no such user %q", name)
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q: uid %s, gid %s are not numbers", name, u.Uid, u.Gid)
	}
	return &Owner{UID: uid, GID: gid}, nil
}
