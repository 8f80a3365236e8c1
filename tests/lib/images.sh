# Test images, shared by the containerd test scripts (sourced, bash).
#
#   BUSYBOX_IMAGE      the name `ctr images import` gives the busybox image
#   BUSYBOX_APP_IMAGE  the same image with User 1000:1000 (ctr 1.6 run has no --user)
#   BUSYBOX_IMAGE_TAR  where tests/images/build-busybox-image puts it by default
#   busybox_image_tar  prints the archive's path, building it if its inputs
#                      changed (fails with a message naming the fix otherwise)
#
# Images cannot be pulled on the project's machines (no registry access), so
# the tests build their own from Debian's static busybox.

_images_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUSYBOX_IMAGE=docker.io/palisade/busybox:latest
BUSYBOX_APP_IMAGE=docker.io/palisade/busybox:app   # the same, User 1000:1000
BUSYBOX_IMAGE_TAR=$_images_repo/target/palisade/images/busybox-oci.tar
export BUSYBOX_IMAGE BUSYBOX_APP_IMAGE BUSYBOX_IMAGE_TAR

busybox_image_tar() {
    "$_images_repo/tests/images/build-busybox-image" "$BUSYBOX_IMAGE_TAR"
}
