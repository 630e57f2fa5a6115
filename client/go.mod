module github.com/vstage/vstage/client

go 1.24

require (
	github.com/sony/gobreaker/v2 v2.4.0
	go.uber.org/goleak v1.3.0
)
