"""Android side of the edge: the toolchain that builds the demo APK without Gradle,
the build pipeline (`apk`), and the adb logic that puts app and bundle on a phone (`install`).

See ../shared/design/ANDROID.md for the facts these modules rely on.
"""
