# anvil_tristate_option(NAME DOC DEFAULT): a cache option that is AUTO, ON or OFF.
#   AUTO: enabled when the toolchain is found; ON: an error when it is not; OFF: skipped.
function(anvil_tristate_option name doc default)
  set(${name} "${default}" CACHE STRING "${doc} (AUTO/ON/OFF)")
  set_property(CACHE ${name} PROPERTY STRINGS AUTO ON OFF)
  string(TOUPPER "${${name}}" value)
  if(NOT value MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "${name} must be AUTO, ON or OFF, got '${${name}}'")
  endif()
  set(${name} "${value}" PARENT_SCOPE)
endfunction()

# anvil_resolve_option(NAME FOUND REASON): turns NAME into a boolean ANVIL_HAVE_<suffix>
# after detection, failing for ON without the toolchain.
function(anvil_resolve_option name found reason)
  string(REPLACE "ANVIL_WITH_" "" suffix "${name}")
  if(${name} STREQUAL "OFF")
    set(ANVIL_HAVE_${suffix} OFF PARENT_SCOPE)
    message(STATUS "anvil: ${suffix} disabled (${name}=OFF)")
  elseif(found)
    set(ANVIL_HAVE_${suffix} ON PARENT_SCOPE)
    message(STATUS "anvil: ${suffix} enabled")
  elseif(${name} STREQUAL "ON")
    message(FATAL_ERROR "${name}=ON but ${reason}")
  else()
    set(ANVIL_HAVE_${suffix} OFF PARENT_SCOPE)
    message(STATUS "anvil: ${suffix} not built (${name}=AUTO and ${reason})")
  endif()
endfunction()
