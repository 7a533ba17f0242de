package s3

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// errNoCredentials is the cause of every request's failure when no
// credentials are configured: one line that names what to set, rather
// than the SDK's account of the EC2 instance metadata service it probed
// last.
var errNoCredentials = errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY " +
	"(or AWS_PROFILE, or AWS_WEB_IDENTITY_TOKEN_FILE) in tidemark's environment " +
	"(for archive_command and restore_command: the PostgreSQL server's)")

// noCredentials is the credentials provider of a store that has none.
var noCredentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
	return aws.Credentials{}, errNoCredentials
})

// chainHasSource reports whether the AWS SDK's default credential chain
// has somewhere to look besides the instance metadata service: the
// variables of its environment, web identity, container and SSO providers,
// or a shared config or credentials file.
func chainHasSource(getenv func(string) string) bool {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		if getenv(v) != "" {
			return true
		}
	}
	files := []string{getenv("AWS_SHARED_CREDENTIALS_FILE"), getenv("AWS_CONFIG_FILE")}
	if home := getenv("HOME"); home != "" {
		files = append(files, filepath.Join(home, ".aws", "credentials"), filepath.Join(home, ".aws", "config"))
	}
	for _, f := range files {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err == nil {
			return true
		}
	}
	return false
}

// onEC2 reports whether this machine is an EC2 instance, from what the
// kernel shows of its firmware (AWS documents these), so that only there
// the instance metadata service is asked for a role's credentials.
func onEC2() bool {
	for _, p := range []string{"/sys/hypervisor/uuid", "/sys/class/dmi/id/product_uuid", "/sys/class/dmi/id/board_vendor", "/sys/class/dmi/id/sys_vendor"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := strings.ToLower(strings.TrimSpace(string(b)))
		if strings.HasPrefix(s, "ec2") || strings.Contains(s, "amazon") {
			return true
		}
	}
	return false
}
