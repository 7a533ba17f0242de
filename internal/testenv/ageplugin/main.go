// Command ageplugin is an age plugin for tidemark's tests, installed by
// them as age-plugin-tidemarktest: it speaks the age plugin protocol through
// filippo.io/age/plugin, as any third-party plugin would, around an X25519
// key. Its recipient (age1tidemarktest1...) carries an X25519 recipient
// string, its identity (AGE-PLUGIN-TIDEMARKTEST-1...) an X25519 identity
// string, as bech32 data (see PluginRecipient and PluginIdentity in the
// tests). It is not a plugin to use for real: the "hardware" is that string.
package main

import (
	"fmt"
	"os"

	"filippo.io/age"
	"filippo.io/age/plugin"
)

func main() {
	p, err := plugin.New("tidemarktest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	p.HandleRecipient(func(data []byte) (age.Recipient, error) {
		return age.ParseX25519Recipient(string(data))
	})
	p.HandleIdentity(func(data []byte) (age.Identity, error) {
		return age.ParseX25519Identity(string(data))
	})
	os.Exit(p.Main())
}
